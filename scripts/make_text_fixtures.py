#!/usr/bin/env python3
"""Makes the text-family fixtures in tests/fixtures/text/ from the official implementations.

Each fixture is a folder as users have it (config.json, model.safetensors, tokenizer.json and
the tokenizer's config; sentence-transformers modules where it is one) plus `io.safetensors`
with the inputs and the reference outputs, and `sentences.json` with the texts. Weights are
random but seeded (LayerNorm weight U(0.5, 1.5), bias N(0, 0.2²); other biases N(0, 0.1²)),
models are tiny (hidden 32), every output is computed in float32 on the CPU:

  roberta-micro-cls   RobertaForSequenceClassification, 1 label: keys under `roberta.` with
                      the `classifier.*` head; hidden states of the encoder, the logits, and
                      sentence_transformers.CrossEncoder.predict scores on query/document pairs
  xlmr-micro          XLMRobertaModel saved bare (no prefix), a batch with padding
  distilbert-micro    DistilBertModel, sinusoidal positions (held by the checkpoint), ReLU
  electra-micro       ElectraForPreTraining (discriminator, `electra.` prefix and its head),
                      embedding_size 16 != hidden 32 (embeddings_project)
  bert-cross-micro    BertForSequenceClassification, 1 label (pooler + classifier)
  bert-cross-long-micro  the same with 514 positions, model_max_length 384 and no
                      sentence_bert_config.json; CrossEncoder.predict scores on a ~450-token
                      document (cut at 384) and a short one
  modernbert-micro    ModernBertModel: pre-norm without biases, rotary positions (global and
                      local theta), GeGLU, a local window (8) shorter than the longer texts on
                      every layer but each second, final norm
  modernbert-cross-mean-micro, modernbert-cross-cls-micro
                      ModernBertForSequenceClassification, 1 label: `head` (dense, GELU,
                      norm) on the masked mean (dense with bias) or the CLS state (without),
                      then `classifier`; logits and CrossEncoder.predict scores on pairs
  mpnet-micro         sentence-transformers folder on MPNetModel (relative position bias,
                      RoBERTa positions): mean pooling + Normalize as all-mpnet-base-v2, with the
                      encoder's hidden states on the same ids
  st-cls              sentence-transformers folder: BERT + CLS pooling, no Normalize
  st-max              sentence-transformers folder: BERT + max pooling + Normalize, prompts
                      {"query": "query: "} left out of pooling (include_prompt false)
  st-mean-dense       sentence-transformers folder: BERT + mean pooling + Dense(tanh) +
                      Normalize, with prompts {"query": "query: "} (embeddings with and
                      without the prompt)

usage: pip install torch transformers sentence-transformers
       python3 scripts/make_text_fixtures.py tests/fixtures/text [NAME ...]
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    ModernBertModel,
    MPNetConfig,
    MPNetModel,
    ElectraConfig,
    ElectraForPreTraining,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaModel,
)

SENTENCES = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog, twice!",
    "Hello world",
    "Is this the right way to the station? Yes, it is: turn left at the old church and walk "
    "straight on until you see the river, then cross the bridge.",
    "ok",
]
PAIRS_QUERY = "where is the station?"
PAIRS_DOCS = [
    "The station is near the river.",
    "Cats like to sleep on mats.",
    "Turn left at the church to reach the station.",
]


def vocab_words():
    text = " ".join(SENTENCES + PAIRS_DOCS + [PAIRS_QUERY, "query: passage:"]).lower()
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for w, _ in pre.pre_tokenize_str(text)})
    return words


def make_tokenizer(style):
    """A word-level tokenizer with BERT's ([CLS] a [SEP] b [SEP]) or RoBERTa's (<s> a </s></s> b
    </s>) template and the padding it needs."""
    words = vocab_words()
    if style == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    else:
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {t: i for i, t in enumerate(specials + words)}
    unk = specials[1] if style == "bert" else "<unk>"
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if style == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
            model_input_names=["input_ids", "token_type_ids", "attention_mask"],
        )
    else:
        tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
        tok.enable_padding(pad_id=1, pad_token="<pad>")
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
            pad_token="<pad>",
            cls_token="<s>",
            sep_token="</s>",
            mask_token="<mask>",
        )
    fast.model_max_length = 64
    return fast, len(vocab)


def randomize(model, seed):
    """Seeded random weights: norms U(0.5, 1.5) / N(0, 0.2²), biases N(0, 0.1²), the rest
    N(0, 0.2²) (the sinusoidal table DistilBERT builds is kept)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "position_embeddings" in name and getattr(model.config, "sinusoidal_pos_embds", False):
                continue
            low = name.lower()
            if ("layernorm" in low or "layer_norm" in low or low.endswith("norm.weight")) and name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            elif ("layernorm" in low or "layer_norm" in low or "norm." in low) and name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    model.eval()
    return model


def save_folder(out, model, tokenizer):
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # The checkpoint as released: config.json + model.safetensors + tokenizer files.
    for extra in ["generation_config.json"]:
        if os.path.exists(os.path.join(out, extra)):
            os.remove(os.path.join(out, extra))


def write_io(out, tensors, texts):
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "io.safetensors"))
    with open(os.path.join(out, "sentences.json"), "w") as f:
        json.dump(texts, f, indent=2)


def encode(tokenizer, texts, pairs=None):
    if pairs is not None:
        return tokenizer([q for q, _ in pairs], [d for _, d in pairs], padding=True, return_tensors="pt")
    return tokenizer(texts, padding=True, return_tensors="pt")


def encoder_outputs(base, enc):
    kwargs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if "token_type_ids" in enc and "token_type_ids" in base.forward.__code__.co_varnames:
        kwargs["token_type_ids"] = enc["token_type_ids"]
    with torch.no_grad():
        return base(**kwargs).last_hidden_state


def ids_of(enc):
    out = {
        "input_ids": enc["input_ids"].to(torch.int64),
        "attention_mask": enc["attention_mask"].to(torch.int64),
    }
    if "token_type_ids" in enc:
        out["token_type_ids"] = enc["token_type_ids"].to(torch.int64)
    return out


def small(cls, vocab, **kw):
    base = dict(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=66,
        hidden_act="gelu",
    )
    base.update(kw)
    return cls(**base)


def roberta_cls(root):
    from sentence_transformers import CrossEncoder

    out = os.path.join(root, "roberta-micro-cls")
    tok, vocab = make_tokenizer("roberta")
    cfg = small(RobertaConfig, vocab, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                type_vocab_size=1, layer_norm_eps=1e-5, num_labels=1)
    model = randomize(RobertaForSequenceClassification(cfg), 11)
    save_folder(out, model, tok)
    enc = encode(tok, SENTENCES)
    hidden = encoder_outputs(model.roberta, enc)
    pairs = [(PAIRS_QUERY, d) for d in PAIRS_DOCS]
    penc = encode(tok, None, pairs)
    with torch.no_grad():
        logits = model(input_ids=penc["input_ids"], attention_mask=penc["attention_mask"]).logits
    scores = CrossEncoder(out, device="cpu").predict(pairs, convert_to_tensor=True)
    tensors = ids_of(enc)
    tensors["last_hidden_state"] = hidden
    for k, v in ids_of(penc).items():
        tensors["pair_" + k] = v
    tensors["pair_logits"] = logits
    tensors["pair_scores"] = scores.reshape(-1).to(torch.float32)
    write_io(out, tensors, {"texts": SENTENCES, "query": PAIRS_QUERY, "documents": PAIRS_DOCS})


def xlmr(root):
    out = os.path.join(root, "xlmr-micro")
    tok, vocab = make_tokenizer("roberta")
    cfg = small(XLMRobertaConfig, vocab, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                type_vocab_size=1, layer_norm_eps=1e-5)
    model = randomize(XLMRobertaModel(cfg, add_pooling_layer=True), 12)
    save_folder(out, model, tok)
    enc = encode(tok, SENTENCES)
    tensors = ids_of(enc)
    with torch.no_grad():
        o = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    tensors["last_hidden_state"] = o.last_hidden_state
    tensors["pooler_output"] = o.pooler_output
    write_io(out, tensors, {"texts": SENTENCES})


def distilbert(root):
    out = os.path.join(root, "distilbert-micro")
    tok, vocab = make_tokenizer("bert")
    cfg = DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                           max_position_embeddings=64, sinusoidal_pos_embds=True,
                           activation="relu", pad_token_id=0)
    model = randomize(DistilBertModel(cfg), 13)
    save_folder(out, model, tok)
    enc = encode(tok, SENTENCES)
    tensors = ids_of(enc)
    tensors.pop("token_type_ids", None)
    tensors["last_hidden_state"] = encoder_outputs(model, enc)
    write_io(out, tensors, {"texts": SENTENCES})


def electra(root):
    out = os.path.join(root, "electra-micro")
    tok, vocab = make_tokenizer("bert")
    cfg = small(ElectraConfig, vocab, embedding_size=16, type_vocab_size=2, layer_norm_eps=1e-12)
    model = randomize(ElectraForPreTraining(cfg), 14)
    save_folder(out, model, tok)
    enc = encode(tok, SENTENCES)
    tensors = ids_of(enc)
    tensors["last_hidden_state"] = encoder_outputs(model.electra, enc)
    write_io(out, tensors, {"texts": SENTENCES})


def bert_cross(root):
    from sentence_transformers import CrossEncoder

    out = os.path.join(root, "bert-cross-micro")
    tok, vocab = make_tokenizer("bert")
    cfg = small(BertConfig, vocab, type_vocab_size=2, num_labels=1)
    model = randomize(BertForSequenceClassification(cfg), 15)
    save_folder(out, model, tok)
    pairs = [(PAIRS_QUERY, d) for d in PAIRS_DOCS]
    penc = encode(tok, None, pairs)
    with torch.no_grad():
        logits = model(**penc).logits
    scores = CrossEncoder(out, device="cpu").predict(pairs, convert_to_tensor=True)
    tensors = {"pair_" + k: v for k, v in ids_of(penc).items()}
    tensors["pair_logits"] = logits
    tensors["pair_scores"] = scores.reshape(-1).to(torch.float32)
    write_io(out, tensors, {"query": PAIRS_QUERY, "documents": PAIRS_DOCS})


def bert_cross_long(root):
    """A cross-encoder with 514 positions whose tokenizer truncates at 384 (model_max_length)
    and no sentence_bert_config.json, as most cross-encoders are released: a document of ~450
    tokens is cut at 384 by CrossEncoder.predict, which `backbone rerank` and `/rerank` must
    match (they once cut at 512 and 256)."""
    from sentence_transformers import CrossEncoder

    out = os.path.join(root, "bert-cross-long-micro")
    tok, vocab = make_tokenizer("bert")
    tok.model_max_length = 384
    cfg = small(BertConfig, vocab, type_vocab_size=2, num_labels=1, max_position_embeddings=514)
    model = randomize(BertForSequenceClassification(cfg), 16)
    save_folder(out, model, tok)
    words = " ".join(PAIRS_DOCS).split()
    long_doc = " ".join(words[(i + i // len(words)) % len(words)] for i in range(450))
    docs = [long_doc, PAIRS_DOCS[0]]
    pairs = [(PAIRS_QUERY, d) for d in docs]
    full = tok([PAIRS_QUERY], [long_doc], truncation=False)["input_ids"][0]
    assert len(full) > 400, len(full)
    encoder = CrossEncoder(out, device="cpu")
    scores = encoder.predict(pairs, convert_to_tensor=True)
    tensors = {"pair_scores": scores.reshape(-1).to(torch.float32)}
    write_io(out, tensors, {"query": PAIRS_QUERY, "documents": docs,
                            "untruncated_pair_tokens": len(full),
                            "cross_encoder_max_length": encoder.max_length})


def modernbert_config(vocab, **kw):
    """The micro ModernBERT: 3 layers, a local window (8) on each layer but every second."""
    cfg = ModernBertConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=64, norm_eps=1e-5,
        global_attn_every_n_layers=2, local_attention=8, global_rope_theta=160000.0,
        local_rope_theta=10000.0, pad_token_id=0, cls_token_id=2, sep_token_id=3,
        bos_token_id=2, eos_token_id=3, hidden_activation="gelu", **kw,
    )
    cfg._attn_implementation = "eager"
    return cfg


def modernbert(root):
    out = os.path.join(root, "modernbert-micro")
    tok, vocab = make_tokenizer("bert")
    model = randomize(ModernBertModel(modernbert_config(vocab)), 17)
    save_folder(out, model, tok)
    enc = encode(tok, SENTENCES)
    tensors = ids_of(enc)
    tensors.pop("token_type_ids", None)
    with torch.no_grad():
        o = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
    tensors["last_hidden_state"] = o.last_hidden_state
    write_io(out, tensors, {"texts": SENTENCES})


def modernbert_cross(root, pooling, bias, seed):
    """ModernBertForSequenceClassification, 1 label: `head` (dense, GELU, norm) on the CLS
    state or the masked mean, then `classifier`."""
    from sentence_transformers import CrossEncoder

    out = os.path.join(root, f"modernbert-cross-{pooling}-micro")
    tok, vocab = make_tokenizer("bert")
    cfg = modernbert_config(
        vocab, num_labels=1, classifier_pooling=pooling, classifier_bias=bias,
        classifier_activation="gelu",
    )
    model = randomize(ModernBertForSequenceClassification(cfg), seed)
    save_folder(out, model, tok)
    pairs = [(PAIRS_QUERY, d) for d in PAIRS_DOCS]
    penc = encode(tok, None, pairs)
    with torch.no_grad():
        logits = model(input_ids=penc["input_ids"], attention_mask=penc["attention_mask"]).logits
    scores = CrossEncoder(out, device="cpu").predict(pairs, convert_to_tensor=True)
    tensors = {"pair_" + k: v for k, v in ids_of(penc).items()}
    tensors["pair_logits"] = logits
    tensors["pair_scores"] = scores.reshape(-1).to(torch.float32)
    write_io(out, tensors, {"query": PAIRS_QUERY, "documents": PAIRS_DOCS})


def mpnet(root):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st

    out = os.path.join(root, "mpnet-micro")
    tmp = out + ".base"
    tok, vocab = make_tokenizer("roberta")
    cfg = small(MPNetConfig, vocab, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                layer_norm_eps=1e-5, relative_attention_num_buckets=32)
    base = randomize(MPNetModel(cfg), 16)
    save_folder(tmp, base, tok)
    model = SentenceTransformer(
        modules=[st.Transformer(tmp, max_seq_length=64), st.Pooling(32, pooling_mode="mean"), st.Normalize()],
        device="cpu",
    )
    if os.path.exists(out):
        shutil.rmtree(out)
    model.save(out, safe_serialization=True)
    shutil.rmtree(tmp)
    model = SentenceTransformer(out, device="cpu")
    enc = encode(tok, SENTENCES)
    tensors = ids_of(enc)
    tensors["last_hidden_state"] = encoder_outputs(model[0].auto_model, enc)
    tensors["embeddings"] = model.encode(SENTENCES, convert_to_tensor=True).to(torch.float32)
    write_io(out, tensors, {"texts": SENTENCES})


def sentence_transformer(root, name, pooling, dense, normalize, prompts, seed, include_prompt=True):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import models as st

    out = os.path.join(root, name)
    tmp = out + ".base"
    tok, vocab = make_tokenizer("bert")
    cfg = small(BertConfig, vocab, type_vocab_size=2)
    base = randomize(BertModel(cfg), seed)
    save_folder(tmp, base, tok)
    word = st.Transformer(tmp, max_seq_length=48)
    modules = [word, st.Pooling(32, pooling_mode=pooling, include_prompt=include_prompt)]
    if dense:
        torch.manual_seed(seed)
        d = st.Dense(32, 24, activation_function=torch.nn.Tanh())
        randomize(d, seed + 100)
        modules.append(d)
    if normalize:
        modules.append(st.Normalize())
    model = SentenceTransformer(modules=modules, device="cpu", prompts=prompts or None)
    if os.path.exists(out):
        shutil.rmtree(out)
    model.save(out, safe_serialization=True)
    shutil.rmtree(tmp)
    # Reload as a user would.
    model = SentenceTransformer(out, device="cpu")
    tensors = {"embeddings": model.encode(SENTENCES, convert_to_tensor=True).to(torch.float32)}
    if prompts:
        tensors["query_embeddings"] = model.encode(
            SENTENCES, prompt_name="query", convert_to_tensor=True
        ).to(torch.float32)
    write_io(out, tensors, {"texts": SENTENCES, "prompts": prompts})


def main():
    """usage: make_text_fixtures.py [ROOT] [NAME ...]: every fixture, or only those named."""
    root = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/text"
    only = set(sys.argv[2:])
    os.makedirs(root, exist_ok=True)
    torch.manual_seed(0)
    makers = {
        "roberta-micro-cls": lambda: roberta_cls(root),
        "xlmr-micro": lambda: xlmr(root),
        "distilbert-micro": lambda: distilbert(root),
        "electra-micro": lambda: electra(root),
        "bert-cross-micro": lambda: bert_cross(root),
        "bert-cross-long-micro": lambda: bert_cross_long(root),
        "mpnet-micro": lambda: mpnet(root),
        "modernbert-micro": lambda: modernbert(root),
        "modernbert-cross-mean-micro": lambda: modernbert_cross(root, "mean", True, 18),
        "modernbert-cross-cls-micro": lambda: modernbert_cross(root, "cls", False, 19),
        "st-cls": lambda: sentence_transformer(root, "st-cls", "cls", False, False, None, 21),
        "st-max": lambda: sentence_transformer(
            root, "st-max", "max", False, True, {"query": "query: "}, 22, include_prompt=False
        ),
        "st-mean-dense": lambda: sentence_transformer(
            root, "st-mean-dense", "mean", True, True, {"query": "query: "}, 23
        ),
    }
    unknown = only - set(makers)
    if unknown:
        sys.exit(f"unknown fixtures: {sorted(unknown)}; known: {sorted(makers)}")
    for name, make in makers.items():
        if not only or name in only:
            make()
    print("fixtures written to", root)


if __name__ == "__main__":
    main()
