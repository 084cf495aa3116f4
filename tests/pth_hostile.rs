//! `.pth` checkpoints built to exhaust memory or time, each refused with a clear error in
//! bounded memory: memo and `DUP` bombs copying one large string, views that repeat a tiny
//! storage (stride 0) into gigabytes or have a thousand dimensions, archives whose entries
//! overlap or that are made of repeated end records, a FIFO given as a checkpoint, and
//! non-finite weights (`convert` refuses them as every loader does).

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use backbone::models::pth;
use common::hostile::{assert_fails, backbone, backbone_capped, crc32, p, scratch};

/// A hostile checkpoint: its name, its bytes, and words its refusal must contain.
type Case = (&'static str, Vec<u8>, &'static [&'static str]);

/// A stored zip of `entries`; each alias adds a central-directory entry with a new name that
/// points at an existing entry's data (entries that overlap).
fn stored_zip(entries: &[(&str, &[u8])], aliases: &[(&str, usize)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    let mut offsets = Vec::new();
    let record = |name: &str, data: &[u8], offset: u32, central: &mut Vec<u8>| {
        let (n, len, sum) = (name.len() as u16, data.len() as u32, crc32(data));
        central.extend(b"PK\x01\x02");
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend(sum.to_le_bytes());
        central.extend(len.to_le_bytes());
        central.extend(len.to_le_bytes());
        central.extend(n.to_le_bytes());
        central.extend([0; 12]);
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    };
    for (name, data) in entries {
        let offset = out.len() as u32;
        offsets.push(offset);
        let (n, len, sum) = (name.len() as u16, data.len() as u32, crc32(data));
        out.extend(b"PK\x03\x04");
        out.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        out.extend(sum.to_le_bytes());
        out.extend(len.to_le_bytes());
        out.extend(len.to_le_bytes());
        out.extend(n.to_le_bytes());
        out.extend([0, 0]);
        out.extend(name.as_bytes());
        out.extend(*data);
        record(name, data, offset, &mut central);
    }
    for (name, of) in aliases {
        let (_, data) = entries[*of];
        record(name, data, offsets[*of], &mut central);
    }
    let (at, count) = (out.len() as u32, (entries.len() + aliases.len()) as u16);
    out.extend(&central);
    out.extend(b"PK\x05\x06\0\0\0\0");
    out.extend(count.to_le_bytes());
    out.extend(count.to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(at.to_le_bytes());
    out.extend([0, 0]);
    out
}

fn unicode(s: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((s.len() as u32).to_le_bytes());
    v.extend(s.as_bytes());
    v
}

fn int(i: i32) -> Vec<u8> {
    let mut v = vec![b'J'];
    v.extend(i.to_le_bytes());
    v
}

/// `{"w": _rebuild_tensor_v2(<storage kind, 'data/0', numel>, 0, size, stride, False,
/// OrderedDict())}` as torch.save pickles it (protocol 2).
fn state_dict_pickle(kind: &str, numel: i32, size: &[i32], stride: &[i32]) -> Vec<u8> {
    let mut v = vec![0x80, 2, b'}'];
    v.extend(unicode("w"));
    v.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    v.push(b'(');
    v.extend(unicode("storage"));
    v.extend(format!("ctorch\n{kind}\n").as_bytes());
    v.extend(unicode("0"));
    v.extend(unicode("cpu"));
    v.extend(int(numel));
    v.extend(b"tQ");
    v.extend(int(0));
    for dims in [size, stride] {
        v.push(b'(');
        for &d in dims {
            v.extend(int(d));
        }
        v.push(b't');
    }
    v.push(0x89);
    v.extend(b"ccollections\nOrderedDict\n)R");
    v.extend(b"tRs.");
    v
}

fn checkpoint(pickle: &[u8], storage: &[u8]) -> Vec<u8> {
    stored_zip(&[("a/data.pkl", pickle), ("a/data/0", storage)], &[])
}

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn refused(bytes: &[u8], words: &[&str]) {
    let start = Instant::now();
    let err = pth::read_pth(bytes, "hostile.pth").expect_err("refused");
    let message = err.to_string();
    for w in words {
        assert!(message.contains(w), "{w:?} not in: {message}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{message}: {:?}",
        start.elapsed()
    );
}

#[test]
fn a_well_formed_hand_made_checkpoint_reads() {
    let good = checkpoint(
        &state_dict_pickle("FloatStorage", 4, &[2, 2], &[2, 1]),
        &floats(&[1.0, 2.0, 3.0, 4.0]),
    );
    let tensors = pth::read_pth(&good, "good.pth").expect("the builder writes real checkpoints");
    assert_eq!(tensors[0].0, "w");
    assert_eq!(tensors[0].1.data, vec![1.0, 2.0, 3.0, 4.0]);
}

/// One 1 MiB string, then 1,000 copies of it through BINGET, and through DUP.
fn memo_bombs() -> Vec<Case> {
    let big = "x".repeat(1 << 20);
    let mut memo = vec![0x80, 2, b']', b'('];
    memo.extend(unicode(&big));
    memo.extend([b'q', 0]);
    for _ in 0..1000 {
        memo.extend([b'h', 0]);
    }
    memo.extend(b"e.");
    let mut dup = vec![0x80, 2, b']', b'('];
    dup.extend(unicode(&big));
    dup.extend(std::iter::repeat_n(b'2', 1000));
    dup.extend(b"e.");
    vec![
        (
            "memo",
            stored_zip(&[("a/data.pkl", &memo)], &[]),
            &["memo bomb"],
        ),
        (
            "dup",
            stored_zip(&[("a/data.pkl", &dup)], &[]),
            &["memo bomb"],
        ),
    ]
}

/// Stride-0 views of 2^28 to 2^31 elements over a 4-element storage (also at rank 2), and a
/// view of rank 1000.
fn view_bombs() -> Vec<Case> {
    let storage = floats(&[1.0, 2.0, 3.0, 4.0]);
    let mut cases: Vec<Case> = [
        ("stride0-2^28", vec![1 << 28], vec![0]),
        ("stride0-rank2", vec![1 << 30, 2], vec![0, 1]),
        ("stride0-2^31", vec![i32::MAX], vec![0]),
    ]
    .into_iter()
    .map(|(name, size, stride)| {
        let bytes = checkpoint(
            &state_dict_pickle("FloatStorage", 4, &size, &stride),
            &storage,
        );
        (name, bytes, &["more than its storage", "`w`"][..])
    })
    .collect();
    let pickle = state_dict_pickle("FloatStorage", 4, &[1; 1000], &[0; 1000]);
    cases.push(("rank1000", checkpoint(&pickle, &storage), &["rank 1000"]));
    cases
}

/// Archive entries whose data overlap, and 4 MiB of end records (64 s in the archive reader
/// before).
fn archive_bombs() -> Vec<Case> {
    let pickle = state_dict_pickle("FloatStorage", 4, &[4], &[1]);
    let storage = floats(&[1.0, 2.0, 3.0, 4.0]);
    let overlapping = stored_zip(
        &[("a/data.pkl", &pickle), ("a/data/0", &storage)],
        &[("a/data/1", 1), ("a/data/2", 1)],
    );
    let end = b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
    let repeated: Vec<u8> = end.iter().copied().cycle().take(4 << 20).collect();
    vec![
        ("overlap", overlapping, &["overlap"]),
        ("end-records", repeated, &["end records"]),
    ]
}

#[test]
fn memo_and_dup_bombs_are_refused_by_bytes() {
    for (_, bytes, words) in memo_bombs() {
        refused(&bytes, words);
    }
}

#[test]
fn views_that_repeat_their_storage_or_have_a_thousand_dimensions_are_refused() {
    for (_, bytes, words) in view_bombs() {
        refused(&bytes, words);
    }
}

#[test]
fn archive_bombs_are_refused() {
    for (_, bytes, words) in archive_bombs() {
        refused(&bytes, words);
    }
}

/// Every memory case above through the binary, as it was found: `backbone convert` under a
/// 4 GiB address-space cap (`ulimit -v`) refuses each with exit status 1 and a message, no
/// signal, in bounded time, and writes nothing.
#[test]
fn every_bomb_is_refused_by_convert_under_a_4_gib_cap() {
    let dir = scratch("pth-capped");
    let cases = [memo_bombs(), view_bombs(), archive_bombs()].concat();
    for (name, bytes, words) in cases {
        let path = dir.join(format!("{name}.pth"));
        std::fs::write(&path, &bytes).expect("write");
        let output = dir.join(format!("{name}.out"));
        let r = backbone_capped(&["convert", "--checkpoint", p(&path), "--output", p(&output)]);
        assert_fails(name, r, words, 30);
        assert!(!output.exists(), "{name}: nothing written");
    }
}

#[test]
fn non_finite_weights_are_refused_by_convert() {
    let dir = scratch("pth-non-finite");
    for (name, kind, storage, numel) in [
        ("nan.pth", "FloatStorage", floats(&[1.0, f32::NAN]), 2),
        (
            "f64.pth",
            "DoubleStorage",
            [1e300f64, 0.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            2,
        ),
    ] {
        let path = dir.join(name);
        let bytes = checkpoint(&state_dict_pickle(kind, numel, &[2], &[1]), &storage);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(&bytes))
            .expect("write");
        let output = dir.join(format!("{name}.out"));
        let r = backbone(&["convert", "--checkpoint", p(&path), "--output", p(&output)]);
        assert_fails(name, r, &["non-finite", "`w`"], 30);
        assert!(!output.exists(), "{name}: nothing written");
    }
}

#[cfg(unix)]
#[test]
fn a_fifo_is_not_a_checkpoint() {
    let dir = scratch("pth-fifo");
    let fifo = dir.join("model.pth");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let output = dir.join("out");
    let r = backbone(&["convert", "--checkpoint", p(&fifo), "--output", p(&output)]);
    assert_fails("a FIFO checkpoint", r, &["not a regular file"], 10);
}
