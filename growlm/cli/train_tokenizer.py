"""`scripts/train_tokenizer.py`: train a small byte-fallback BPE (Llama conventions) on a SlimPajama-layout split.

    python scripts/train_tokenizer.py --vocab-size 4096 --out growlm/assets/tokenizer/bpe-4k
    python scripts/train_tokenizer.py --vocab-size 8192 --source ../shared/data/slimpajama-sample --out runs/bpe-8k

The default corpus is the vendored sample's train split with GitHub dropped (the training recipe's filter), so
the output is the vendored `growlm/assets/tokenizer/bpe-4k` byte for byte. The folder loads offline with
`AutoTokenizer.from_pretrained`; `tokenizer_training.json` records the corpus, vocab size and SHA-256.
"""

from __future__ import annotations

import argparse
import hashlib

from growlm.assets import SAMPLE_DATA_DIR
from growlm.cli.errors import command
from growlm.data.config import DataConfig


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train_tokenizer.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=4096, help="total ids, specials and byte tokens included")
    parser.add_argument("--source", default=str(SAMPLE_DATA_DIR), help="SlimPajama-layout folder or glob")
    parser.add_argument("--split", default="train")
    parser.add_argument("--exclude-sets", default="RedPajamaGithub", help="comma list of set names to drop")
    parser.add_argument("--out", required=True, help="output folder (replaced only if written by this trainer)")
    return parser.parse_args(argv)


@command
def main(argv: list[str]) -> int:
    args = parse(argv)
    from growlm.data.tokenizer_train import check_vocab_size, corpus_texts, save_tokenizer_folder, train_bpe

    check_vocab_size(args.vocab_size)
    cfg = DataConfig(source=args.source, exclude_sets=[s for s in args.exclude_sets.split(",") if s])
    texts = list(corpus_texts(cfg, args.split))
    tokenizer = train_bpe(texts, vocab_size=args.vocab_size)
    corpus = hashlib.sha256("\0".join(texts).encode("utf-8")).hexdigest()
    record = save_tokenizer_folder(tokenizer, args.out, record={
        "corpus": {"source": cfg.source.replace(str(SAMPLE_DATA_DIR), "growlm/assets/slimpajama-sample"),
                   "split": args.split, "exclude_sets": cfg.exclude_sets, "documents": len(texts),
                   "characters": sum(len(t) for t in texts), "text_sha256": corpus},
        "trainer": "tokenizers BpeTrainer, byte_fallback, limit_alphabet 256 (growlm.data.tokenizer_train)"})
    print(f"wrote {args.out}: vocab {record['vocab_size']}, {len(texts)} documents, sha256 {record['sha256']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
