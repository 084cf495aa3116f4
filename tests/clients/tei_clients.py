"""The real Python clients people point at text-embeddings-inference, against `backbone serve`.

Usage: tei_clients.py EMBEDDING_URL RERANKER_URL TEXT...
Prints one JSON object: what each client call returned (tests/tei_clients.rs compares it with
the CLI's vectors and scores).
"""

import json
import sys

from huggingface_hub import InferenceClient
from openai import OpenAI

embedding_url, reranker_url, texts = sys.argv[1], sys.argv[2], sys.argv[3:]

openai = OpenAI(base_url=f"{embedding_url}/v1", api_key="unused")
hf = InferenceClient(model=embedding_url)
hf_reranker = InferenceClient(model=reranker_url)

out = {
    # The client's default asks for base64 and decodes it itself.
    "openai_default": [
        d.embedding for d in openai.embeddings.create(model="any", input=texts).data
    ],
    "openai_float": [
        d.embedding
        for d in openai.embeddings.create(model="any", input=texts, encoding_format="float").data
    ],
    "openai_dimensions": [
        d.embedding
        for d in openai.embeddings.create(model="any", input=texts[0], dimensions=8).data
    ],
    "hf_feature_extraction": hf.feature_extraction(
        texts, normalize=True, prompt_name=None, truncate=True, truncation_direction="right"
    ).tolist(),
    "hf_sentence_similarity": hf.sentence_similarity(texts[0], other_sentences=texts[1:]),
    "hf_text_classification": [
        {"label": e.label, "score": e.score}
        for e in (lambda r: r if isinstance(r, list) else [r])(
            hf_reranker.text_classification(texts[0])
        )
    ],
}
print(json.dumps(out))
