#!/usr/bin/env python3
"""Writes words.txt beside this file from jieba's dictionary.

Usage: extract_words.py PATH/TO/jieba-rs-0.11.0/src/data/dict.txt > words.txt

Keeps the entries made only of CJK Unified Ideographs (U+4E00..U+9FFF), 1 to 4 characters
long, takes the 30,000 most frequent (ties by code point order) and prints `word freq` lines.
"""
import re
import sys

CJK = re.compile(r"^[\u4e00-\u9fff]{1,4}$")
KEEP = 30_000

entries = []
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        parts = line.split()
        if len(parts) >= 2 and CJK.match(parts[0]):
            entries.append((-int(parts[1]), parts[0]))
entries.sort()
print("# The 30,000 most frequent entries of jieba's dictionary (dict.txt, MIT licence,")
print("# https://github.com/fxsjy/jieba, as bundled in the jieba-rs 0.11 crate) made only of")
print("# CJK ideographs, 1-4 characters. Columns: word, frequency. Written by extract_words.py.")
for neg_freq, word in entries[:KEEP]:
    print(f"{word} {-neg_freq}")
