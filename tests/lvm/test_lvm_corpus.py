import gzip
import os

import pytest

from lvm_core import corpus as C

RST = """\
=========
The Title
=========

This is the first sentence of the intro. It has a :ref:`link <target>` and ``code`` in it.

.. code-block:: c

   int main(void) { return 0; }

.. note::

   Notes are kept because they are prose about the topic.

A literal block follows here::

    $ make something happen now

Back in prose, with *emphasis* and a `web link <https://example.org>`_ inside.
"""

MD = """\
# Heading one

Markdown prose with a [link](https://x.org) and `inline code` in it. Second sentence is here.

```python
print("this code must vanish entirely")
```

- A bullet item that is long enough to count.
"""

HTML = """<html><head><title>Skip me please now</title><style>p {color: red}</style></head>
<body><nav>Navigation links are not prose at all</nav>
<p>HTML paragraphs become sentences here. Entities like &amp; are decoded properly.</p>
<pre>code blocks are dropped from the text</pre><script>var x = "not text at all";</script>
</body></html>"""

ROFF = """.\\" a comment line that is dropped
.TH LS 1 "2024" "GNU" "User Commands"
.SH NAME
ls \\- list directory contents
.SH DESCRIPTION
List information about the FILEs in the current directory by default.
Sort entries alphabetically if none of the options is specified.
.TP
.B \\-a
do not ignore entries starting with a dot character
.nf
this no-fill block is code and must be dropped
.fi
"""


def _write(path, text, gz=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def test_rst_stripping():
    sents = C.extract_sentences(RST, "rst")
    joined = " ".join(sents)
    assert "This is the first sentence of the intro." in sents
    assert "It has a link and code in it." in sents
    assert "Notes are kept because they are prose about the topic." in sents
    assert "Back in prose, with emphasis and a web link inside." in sents
    assert "int main" not in joined and "make something" not in joined
    assert "code-block" not in joined and "====" not in joined


def test_markdown_stripping():
    sents = C.extract_sentences(MD, "md")
    assert "Markdown prose with a link and inline code in it." in sents
    assert "Second sentence is here." in sents
    assert "A bullet item that is long enough to count." in sents
    assert not any("print" in s or "#" in s for s in sents)


def test_html_stripping():
    sents = C.extract_sentences(HTML, "html")
    assert sents == ["HTML paragraphs become sentences here.", "Entities like & are decoded properly."]


def test_roff_stripping():
    sents = C.extract_sentences(ROFF, "roff")
    assert "List information about the FILEs in the current directory by default." in sents
    assert "Sort entries alphabetically if none of the options is specified." in sents
    assert "-a do not ignore entries starting with a dot character" in sents  # .TP tag joins
    assert not any("no-fill" in s or "comment" in s for s in sents)


def test_split_sentences_abbreviations_and_filters():
    s = C.split_sentences(
        "Use a tool, e.g. the linker, for this job. Then 3 + 4 = 7 ;;. Short. Another full sentence comes here."
    )
    assert s == ["Use a tool, e.g. the linker, for this job.", "Another full sentence comes here."]


def test_load_folder_all_formats_and_lanes(tmp_path):
    _write(tmp_path / "guide" / "intro.rst", RST)
    _write(tmp_path / "guide" / "more.md", MD)
    _write(tmp_path / "web" / "page.html", HTML)
    _write(tmp_path / "man" / "man1" / "ls.1.gz", ROFF, gz=True)
    _write(tmp_path / "top.txt", "A file at the root of the tree. It has two sentences here.")
    _write(tmp_path / "data" / "blob.bin", "binary junk that is not documentation")
    c = C.load_folder(tmp_path)
    ids = {a.id: a for a in c.articles}
    assert set(ids) == {"guide/intro.rst", "guide/more.md", "web/page.html", "man/man1/ls.1", "top.txt"}
    assert ids["man/man1/ls.1"].lane == "man" and ids["man/man1/ls.1"].fmt == "roff"
    assert ids["top.txt"].lane == C.ROOT_LANE
    assert c.lanes == sorted({"guide", "man", "web", C.ROOT_LANE})
    assert c.skipped.get("unsupported") == 1
    # Sentences keep document order.
    assert ids["guide/intro.rst"].sentences[0] == "This is the first sentence of the intro."


def test_lane_pooling_keeps_15_largest(tmp_path):
    for i in range(20):
        n = 20 - i  # section s00 is the largest
        body = " ".join(f"Sentence number {j} of section {i} is written here." for j in range(n))
        _write(tmp_path / f"s{i:02d}" / "doc.rst", body)
    c = C.load_folder(tmp_path, max_lanes=16)
    assert len(c.lanes) == 16 and C.OTHER_LANE in c.lanes
    lanes = {a.id.split("/")[0]: a.lane for a in c.articles}
    assert all(lanes[f"s{i:02d}"] == f"s{i:02d}" for i in range(15))
    assert all(lanes[f"s{i:02d}"] == C.OTHER_LANE for i in range(15, 20))


def test_cap_is_whole_articles_in_hash_order(tmp_path):
    for i in range(10):
        _write(tmp_path / "d" / f"a{i}.rst", " ".join(f"Article {i} says sentence {j} out loud." for j in range(5)))
    c = C.load_folder(tmp_path, max_sentences=12)
    assert c.capped and c.n_sentences <= 12 and all(len(a.sentences) == 5 for a in c.articles)
    again = C.load_folder(tmp_path, max_sentences=12)
    assert [a.id for a in again.articles] == [a.id for a in c.articles]


def test_empty_missing_and_unreadable_folders(tmp_path):
    with pytest.raises(C.CorpusError, match=str(tmp_path)):
        C.load_folder(tmp_path)
    with pytest.raises(C.CorpusError, match="does not exist"):
        C.load_folder(tmp_path / "nope")
    _write(tmp_path / "x.rst", "ok ok")  # too short for any sentence
    with pytest.raises(C.CorpusError, match="no readable documentation"):
        C.load_folder(tmp_path)
    _write(tmp_path / "bad.rst.gz", "x")  # not gzip inside
    (tmp_path / "bad.rst.gz").write_bytes(b"not gzip at all")
    with pytest.raises(C.CorpusError, match="unreadable=1"):
        C.load_folder(tmp_path)
    if os.geteuid() != 0:  # root reads everything
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0)
        try:
            with pytest.raises(C.CorpusError, match="not readable"):
                C.load_folder(locked)
        finally:
            locked.chmod(0o755)


def test_pydoc_corpus_lanes_and_dedup():
    c = C.load_pydoc_topics()
    assert 1 < len(c.lanes) <= 16
    assert c.n_sentences > 2000
    assert c.skipped.get("duplicate_content", 0) > 0  # e.g. 'if' is inside 'compound'
    ids = {a.id for a in c.articles}
    assert "pydoc/compound" in ids and "pydoc/if" not in ids
    assert C.pydoc_lane("assert") == "simple_statements"
    assert C.pydoc_lane("while") == "compound_statements"
    again = C.load_pydoc_topics()
    assert again.content_hash() == c.content_hash()


def test_drop_contained():
    big = C.Article("big", "l", ("s1", "s2", "s3", "s4"))
    small = C.Article("small", "l", ("s2", "s3", "new"))
    other = C.Article("other", "l", ("x1", "x2"))
    kept, dropped = C.drop_contained([small, big, other])
    assert dropped == 1 and [a.id for a in kept] == ["big", "other"]
