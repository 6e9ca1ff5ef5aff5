from __future__ import annotations

import textwrap
from pathlib import Path

from lens_engine.corpus import build_corpus, manifest_digest
from lens_engine.text import analyze, split_identifier


def test_split_identifier():
    assert split_identifier("read_file") == ["read", "file"]
    assert split_identifier("getHTTPResponse2") == ["get", "http", "response", "2"]
    assert split_identifier("__init__") == ["init"]
    assert split_identifier("XMLParser") == ["xml", "parser"]


def test_analyze_stopwords_and_compounds():
    stream, bag = analyze("def read_file(self, path): return the path")
    assert stream == ["read", "file", "path", "path"]
    assert "read_file" in bag and "self" not in bag and "the" not in bag


def _write(root, rel, text):
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))


def _demo(tmp_path):
    _write(
        tmp_path,
        "pkg/mod.py",
        '''
        import functools


        @functools.lru_cache()
        def cached_thing(a, b=1):
            """Compute the cached thing quickly.

            More words here.
            """
            return a + b


        class Box:
            def open(self, *args, **kw):
                """Open the box."""
                return len(args)

            def stub(self):
                """Not done."""
                raise NotImplementedError
    ''',
    )
    _write(tmp_path, "pkg/test/test_mod.py", "def test_x():\n    return 1\n")
    _write(tmp_path, "tests/t.py", "def helper():\n    return 2\n")
    _write(tmp_path, "solo.py", "def alone(x):\n    return x\n")
    return [("demo", tmp_path, "")]


def test_units_spans_docstrings_stubs(tmp_path):
    c = build_corpus(roots=_demo(tmp_path), max_functions=None)
    by = {u.qualname: u for u in c.units}
    assert set(by) == {"cached_thing", "Box.open", "Box.stub", "alone"}
    u = by["cached_thing"]
    assert (u.start_line, u.end_line) == (5, 11)  # decorator included, inclusive
    assert "Compute the cached thing" not in u.text and "return a + b" in u.text
    assert u.doc.startswith("Compute the cached thing") and u.params == ("a", "b")
    assert "lru_cache" in u.decorators
    assert by["Box.open"].cls == "Box" and by["Box.open"].params == ("self", "*args", "**kw")
    assert by["Box.stub"].is_stub and not u.is_stub
    assert by["Box.open"].calls == ("len",)
    assert {u.package for u in c.units} == {"pkg", "solo"}


def test_test_folders_excluded_unless_asked(tmp_path):
    roots = _demo(tmp_path)
    paths = {m[1] for m in build_corpus(roots=roots, max_functions=None).manifest}
    assert not any("/test/" in p or p.startswith("tests/") for p in paths)
    paths_all = {m[1] for m in build_corpus(roots=roots, max_functions=None, include_tests=True).manifest}
    assert "pkg/test/test_mod.py" in paths_all and "tests/t.py" in paths_all


def test_manifest_digest_pins_content(tmp_path):
    roots = _demo(tmp_path)
    d1 = build_corpus(roots=roots, max_functions=None).digest
    assert build_corpus(roots=roots, max_functions=None).digest == d1
    (tmp_path / "solo.py").write_text("def alone(x):\n    return x + 1\n")
    assert build_corpus(roots=roots, max_functions=None).digest != d1
    m = [("r", "a.py", "00"), ("r", "b.py", "11")]
    assert manifest_digest(m) == manifest_digest(list(reversed(m)))


def test_stdlib_subset_deterministic_whole_packages(small_corpus, cache_dir):
    c2 = build_corpus(max_functions=250, cache_dir=cache_dir)
    assert c2.digest == small_corpus.digest and c2.units == small_corpus.units
    assert 100 <= len(small_corpus) <= 250
    full = build_corpus(max_functions=None, cache_dir=cache_dir)
    for pkg in small_corpus.packages:  # whole packages only
        assert sum(u.package == pkg for u in full.units) == sum(u.package == pkg for u in small_corpus.units)
    py = [u for u in full.units if u.language == "python"]
    cpp = [u for u in full.units if u.language == "cpp"]
    assert py and cpp and len(py) + len(cpp) == len(full.units)
    assert all(u.repo == "cpython" and u.path.startswith("Lib/") for u in py)
    assert all(
        u.repo == "arrow" and u.path.startswith("cpp/src/arrow/") and u.package.startswith("arrow.") for u in cpp
    )
    bad = {"test", "tests", "idle_test", "testing", "vendored", "site-packages", "__pycache__"}
    assert not any(bad & set(u.path.split("/")[:-1]) for u in full.units)
    # both languages in the capped corpus, each within its share of the cap
    langs = small_corpus.languages()
    assert set(langs) == {"python", "cpp"} and langs["cpp"]["functions"] <= round(250 * 0.25)
    # docstrings removed from what is indexed
    for units in (py, cpp):
        with_doc = [u for u in units if len(u.doc) > 40][:200]
        assert with_doc and all(u.doc.splitlines()[0] not in u.text for u in with_doc)


HEADER = b"""// Licensed to the Apache Software Foundation
#pragma once
#include <memory>
#define ARROW_MACRO(x) \\
  do_something(x)

namespace arrow {
namespace io {

/// \\brief Read a whole table from a stream.
///
/// Long description that is not the first sentence.
/// \\param[in] source the stream
ARROW_EXPORT Result<std::shared_ptr<Table>> ReadTable(InputStream* source,
                                                      const ReadOptions& options = ReadOptions::Defaults());

class ARROW_EXPORT BufferReader : public RandomAccessFile {
 public:
  /** Make a reader over a buffer. */
  explicit BufferReader(std::shared_ptr<Buffer> buffer);

  /// Return the size of the buffer in bytes
  int64_t size() const { return ComputeSize(buffer_, "}"); }

  ~BufferReader() override;
  bool operator==(const BufferReader& other) const;
  ARROW_DISALLOW_COPY_AND_ASSIGN(BufferReader);

 protected:
  template <typename T>
  Status DoRead(int64_t nbytes, T* out) {
    if (nbytes < 0) {
      return Status::Invalid("negative");
    }
    return ReadInto(out, nbytes);
  }

 private:
  std::shared_ptr<Buffer> buffer_;
  int64_t position_ = Compute(1);
};

}  // namespace io
}  // namespace arrow
"""


def test_cpp_units_spans_names_classes_docs():
    from lens_engine.corpus import Unit
    from lens_engine.cpp_units import units_of_cpp

    units = units_of_cpp(HEADER, "cpp/src/arrow/io/x.h", Path("io/x.h"), "arrow", "arrow.io", "arrow.io.x", Unit)
    by = {u.name: u for u in units}
    assert sorted(by) == ["BufferReader", "DoRead", "ReadTable", "size"]  # no macro, operator, destructor
    rt = by["ReadTable"]
    assert (rt.start_line, rt.end_line, rt.cls, rt.params) == (14, 15, "", ("source", "options"))
    assert rt.doc.startswith("Read a whole table from a stream.") and "source the stream" not in rt.doc
    assert "Read a whole table" not in rt.text and rt.language == "cpp"
    assert by["BufferReader"].cls == "BufferReader" and by["BufferReader"].doc == "Make a reader over a buffer."
    sz = by["size"]
    assert (sz.start_line, sz.end_line, sz.qualname) == (23, 23, "BufferReader.size")
    assert sz.calls == ("ComputeSize",) and sz.doc == "Return the size of the buffer in bytes"
    dr = by["DoRead"]
    assert (dr.start_line, dr.end_line, dr.params) == (30, 36, ("nbytes", "out"))
    assert dr.calls == ("Invalid", "ReadInto") and dr.doc == ""
