"""Builds the English public-domain training corpus of issue 7 from Debian packages.

  apt-get install fortunes bible-kjv-text bible-kjv     # bible-kjv: the `bible` reader of the data
  /usr/bin/python3 python/prepare_corpus.py [--out data/corpus] [--heldout-permille 30]

Sources (both public domain / freely redistributable, shipped by Debian main):
  - bible-kjv-text: the King James Bible (/usr/lib/bible.data, read through `bible Gen1:1-Rev22:21`);
    one document per chapter (1189 documents).
  - fortunes: /usr/share/games/fortunes/* (the inoffensive set; the offensive one is the separate
    package fortunes-off, not used). One document per fortune. The files `ascii-art` (pictures, not
    text) and `ethnic` (ethnic jokes) are left out, and fortunes hitting a short word list too.

Cleaning: overstrike sequences (x BACKSPACE y) resolved, Unicode folded to ASCII (NFKD, quotes and
dashes mapped, anything else dropped), tabs and runs of spaces to one space, lines stripped, blank
lines inside a document dropped, so that in the output files documents are separated by exactly one
blank line ("\\n\\n") and every file is plain 7-bit ASCII.

Split: by document, deterministically: a document is held out when the first 4 bytes of
sha256(source name + text) as an integer mod 1000 are below --heldout-permille (default 30, i.e. ~3%).
Output: OUT/train.txt, OUT/heldout.txt, OUT/manifest.json (sizes, counts, sha256 of both files).
"""

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import unicodedata

FORTUNE_DIR = "/usr/share/games/fortunes"
SKIP_FORTUNE_FILES = {"ascii-art", "ethnic"}
# A last guard on top of the package's own inoffensive/offensive split.
BLOCK_WORDS = re.compile(r"\b(fuck\w*|shit\w*|cunt\w*|nigger\w*|fag\w*|rape\w*|whore\w*|bitch\w*|"
                         r"dick|cock|pussy|penis|vagina|tits?|sex\w*|porn\w*)\b", re.I)

_MAP = {"\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u201c": '"', "\u201d": '"',
        "\u201e": '"', "\u2013": "-", "\u2014": "--", "\u2015": "--", "\u2026": "...",
        "\u00a0": " ", "\u00b4": "'", "\u00ab": '"', "\u00bb": '"', "\u00d7": "x", "\u00df": "ss",
        "\u00e6": "ae", "\u00c6": "AE", "\u0153": "oe", "\u0152": "OE", "\u00f8": "o", "\u00d8": "O"}


def to_ascii(text):
    text = re.sub(r".\x08", "", text)            # overstrike: "_\bA" or "A\bA" -> "A"
    text = text.replace("\x08", "")
    text = "".join(_MAP.get(ch, ch) for ch in text)
    text = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in text if ch == "\n" or " " <= ch <= "~" or ch == "\t")


def normalize(text):
    """ASCII, one space between words, no blank lines, no leading/trailing whitespace."""
    lines = []
    for line in to_ascii(text).split("\n"):
        line = re.sub(r"[ \t]+", " ", line).strip()
        if line:
            lines.append(line)
    return "\n".join(lines)


def bible_documents():
    try:
        out = subprocess.run(["bible", "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL,
                             capture_output=True, check=True).stdout.decode("latin-1")
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"cannot run `bible` (apt-get install bible-kjv bible-kjv-text): {e}")
    docs, title, verses = [], None, []

    def flush():
        if title is not None and verses:
            docs.append(("kjv", normalize(title + "\n" + "\n".join(verses))))

    for line in out.split("\n"):
        if not line.strip():
            continue
        head = re.match(r"^(\S.*\s\d+)\s*$", line)          # "Genesis 1", "1 Kings 3"
        verse = re.match(r"^\s+(\d+)\s+(.*)$", line)        # "  12 And God said ..."
        if verse:
            verses.append(verse.group(1) + " " + verse.group(2).strip())
        elif head and not line.startswith(" "):
            flush()
            title, verses = head.group(1).strip(), []
        elif verses:                                          # wrapped continuation of a verse
            verses[-1] += " " + line.strip()
    flush()
    return docs


def fortune_documents():
    docs, dropped = [], 0
    if not os.path.isdir(FORTUNE_DIR):
        sys.exit(f"{FORTUNE_DIR} missing (apt-get install fortunes)")
    for name in sorted(os.listdir(FORTUNE_DIR)):
        path = os.path.join(FORTUNE_DIR, name)
        if ("." in name or name in SKIP_FORTUNE_FILES or os.path.islink(path)
                or not os.path.isfile(path)):
            continue
        with open(path, "rb") as f:
            raw = f.read().decode("utf-8", errors="replace")
        for entry in re.split(r"\n%\n", "\n" + raw.replace("\r", "") + "\n"):
            text = normalize(entry.strip("%\n"))
            if len(text) < 8:
                continue
            if BLOCK_WORDS.search(text):
                dropped += 1
                continue
            docs.append(("fortunes/" + name, text))
    return docs, dropped


def is_heldout(source, text, permille):
    digest = hashlib.sha256((source + "\0" + text).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % 1000 < permille


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 "..", "data", "corpus")))
    p.add_argument("--heldout-permille", type=int, default=30)
    args = p.parse_args(argv)
    bible = bible_documents()
    fortunes, dropped = fortune_documents()
    if len(bible) != 1189:
        print(f"warning: {len(bible)} Bible chapters (expected 1189)", file=sys.stderr)
    seen, train, held = set(), [], []
    for source, text in bible + fortunes:
        if text in seen:                      # the same fortune in two files
            continue
        seen.add(text)
        (held if is_heldout(source, text, args.heldout_permille) else train).append((source, text))
    os.makedirs(args.out, exist_ok=True)
    manifest = {"heldout_permille": args.heldout_permille, "dropped_by_word_list": dropped,
                "sources": {"kjv": len(bible), "fortunes": len(fortunes)}}
    for part, docs in (("train", train), ("heldout", held)):
        data = ("\n\n".join(t for _, t in docs) + "\n").encode("ascii")
        path = os.path.join(args.out, part + ".txt")
        with open(path, "wb") as f:
            f.write(data)
        n_kjv = sum(1 for s, _ in docs if s == "kjv")
        manifest[part] = {"bytes": len(data), "documents": len(docs), "kjv_chapters": n_kjv,
                          "fortunes": len(docs) - n_kjv,
                          "sha256": hashlib.sha256(data).hexdigest()}
        print(f"{part:8s} {len(data):>9,d} bytes  {len(docs):>6,d} documents "
              f"({n_kjv} KJV chapters, {len(docs) - n_kjv} fortunes)  -> {path}")
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    print(f"dropped by the word list: {dropped} fortunes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
