"""
Similarity report over a batch of submissions (instructors only), built on
copydetect (MOSS-style winnowing over tokenized code):

    similarity_report({"alice": path, "bob": path, ...}, kit_source(), out_dir)

writes out_dir/similarity.csv, pairs ranked by how much solution code they
share, and copydetect's HTML report out_dir/similarity.html with the shared
code highlighted. The kit's own code (the reference module with its solutions
stripped, as helper.release hands it out) is boilerplate: code every
submission has from the kit counts for nothing. Submissions are only read as
text, never imported or run. `python -m helper.grade` writes both files next
to its CSV (off with --no-similarity).

CSV columns (CSV_COLUMNS), one row per pair, highest `max` first:
    name_a, name_b (name_a < name_b), a_in_b (share of a's code, boilerplate
    aside, also found in b), b_in_a, max, shared_tokens (copydetect's count of
    a's filtered-code characters that match b), note (what went wrong reading
    either file). A submission that could not be compared at all (unreadable,
    empty, too large) gets a row of its own at the end, with name_b and the
    numbers empty and the reason in note.
"""
import csv
import io
import logging
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from helper.common.files import atomic_output
from helper.instructor.release import BEGIN, MODULE, REPO_ROOT, strip_solutions

CSV_COLUMNS = ["name_a", "name_b", "a_in_b", "b_in_a", "max", "shared_tokens", "note"]
# Lengths are in characters of copydetect's filtered code, where every name becomes one letter and
# whitespace and comments go: `next_h = torch.tanh(x @ Wx + prev_h @ Wh + b)` is `V=V.V(V@V+V@V+V)`, 16.
# 30 is about two such lines: short enough that a copied two-line step is seen, long enough that the
# common torch idioms of independent solutions mostly are not. On this assignment's fixtures (tests/solutions
# and the reference) independent correct solutions stay under DISPLAY_THRESHOLD at 30, while a copy with renamed
# variables stays near 100% (tests/tool/instructor/test_similarity.py checks both).
NOISE_THRESHOLD = 30
# Equal to the noise threshold: a window of 1, so every k-gram is a fingerprint. Larger windows pick
# the smallest of Python's str hashes, which are salted per process, so the numbers would change from
# run to run; for a ~300-line module keeping every k-gram costs milliseconds, and the CSV is reproducible.
GUARANTEE_THRESHOLD = NOISE_THRESHOLD
# Pairs above this share are shown with their code in the HTML report (the CSV lists every pair).
DISPLAY_THRESHOLD = 0.4  # above what independent solutions share (see NOISE_THRESHOLD)
MAX_BYTES = 1 << 20  # the reference is ~35 kB; tokenizing a huge file would stall the report
FILES = ("similarity.csv", "similarity.html")


def kit_source(reference: Path = REPO_ROOT / MODULE) -> str:
    """
    The kit's module text (helper.release's stripping of the reference): the boilerplate. Empty
    (nothing discounted) when the module in place has no solution blocks: an instructor's own
    solution swapped in, from which no kit can be made.
    """
    text = reference.read_text(encoding="utf-8")
    return strip_solutions(text) if BEGIN in text else ""


def read_module(path: Path) -> Tuple[Optional[str], str]:
    """
    A submission's module as (text, note), read, never run: text is None when there is nothing to
    compare (unreadable, empty, too large: note says why); a file that is not UTF-8 is compared
    with its undecodable bytes replaced, and note says so.
    """
    try:
        path = Path(path)
        if path.stat().st_size > MAX_BYTES:
            return None, f"larger than {MAX_BYTES >> 10} kB: not compared"
        data = path.read_bytes()
    except OSError as error:
        return None, f"cannot be read ({type(error).__name__}: {error.strerror or error})"
    if not data.strip():
        return None, "empty: nothing to compare"
    try:
        return data.decode("utf-8-sig"), ""
    except UnicodeDecodeError as error:
        # Still compared: a stray byte must not hide a copy from the report.
        return data.decode("utf-8", errors="replace"), f"not UTF-8 (byte {error.start}); compared with it replaced"


def _copydetect():
    try:
        import copydetect
    except ImportError as error:
        raise RuntimeError("the similarity report needs copydetect: pip install -r requirements.txt "
                           "(or grade with --no-similarity)") from error
    return copydetect


def fingerprints(texts: Dict[str, str], boilerplate_source: str) -> dict:
    """name -> module text, and the kit's text ('' for none) -> name -> copydetect.CodeFingerprint
    of the text without the kit's k-grams."""
    import numpy as np

    cd = _copydetect()
    kit = cd.CodeFingerprint("kit", NOISE_THRESHOLD, 1, fp=io.StringIO(boilerplate_source), language="python")
    boilerplate = np.unique(np.array(sorted(kit.hashes), dtype=np.int64))
    window = GUARANTEE_THRESHOLD - NOISE_THRESHOLD + 1
    return {name: cd.CodeFingerprint(name, NOISE_THRESHOLD, window, boilerplate, fp=io.StringIO(text),
                                     language="python")
            for name, text in texts.items()}


def _detector(prints: dict):
    """A copydetect.CopyDetector holding these fingerprints (it reads no file), compared."""
    cd = _copydetect()
    detector = cd.CopyDetector(noise_t=NOISE_THRESHOLD, guarantee_t=GUARANTEE_THRESHOLD,
                               display_t=DISPLAY_THRESHOLD, force_language="python", autoopen=False, silent=True)
    names = sorted(prints)
    # The detector fingerprints only files it does not hold yet: given ours, it reads no file.
    detector.test_files, detector.ref_files, detector.file_data = names, list(names), dict(prints)
    detector.run()
    return detector


def rank_pairs(detector, notes: Dict[str, str]) -> List[dict]:
    """Every pair of the detector's files as a CSV row (CSV_COLUMNS), highest `max` first."""
    names, sims, tokens = detector.test_files, detector.similarity_matrix, detector.token_overlap_matrix
    pairs = []
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            b = names[j]
            a_in_b, b_in_a = (max(0.0, float(s)) for s in sims[i, j])
            note = "; ".join(f"{n}: {notes[n]}" for n in (a, b) if notes.get(n))
            pairs.append({"name_a": a, "name_b": b, "a_in_b": round(a_in_b, 4), "b_in_a": round(b_in_a, 4),
                          "max": round(max(a_in_b, b_in_a), 4), "shared_tokens": max(0, int(tokens[i, j])),
                          "note": note})
    pairs.sort(key=lambda p: (-p["max"], -p["shared_tokens"], p["name_a"], p["name_b"]))
    return pairs


def write_csv(path: Path, pairs: List[dict], skipped: Dict[str, str]) -> None:
    """The ranked pairs, then one row per submission left out (its reason in note)."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(pairs)
            for name in sorted(skipped):
                writer.writerow({"name_a": name, "note": skipped[name]})


def write_html(path: Path, detector, skipped: Dict[str, str]) -> None:
    """copydetect's report (pairs at or above DISPLAY_THRESHOLD, shared code highlighted)."""
    if detector is not None and len(detector.test_files) >= 2:
        with warnings.catch_warnings():  # copydetect 0.5.0 reads its template with a deprecated call
            warnings.simplefilter("ignore", DeprecationWarning)
            html = detector.generate_html_report(output_mode="return")
    else:
        html = "<html><body><p>Fewer than two submissions could be compared.</p></body></html>"
    if skipped:
        from html import escape

        items = "".join(f"<li>{escape(n)}: {escape(r)}</li>" for n, r in sorted(skipped.items()))
        html = html.replace("</body>", f"<h3>Not compared</h3><ul>{items}</ul></body>", 1)
    with atomic_output(path) as tmp:
        tmp.write_text(html, encoding="utf-8")


def similarity_report(modules: Dict[str, Path], boilerplate_source: str, out_dir: Path) -> List[dict]:
    """
    Compare every pair of modules and write out_dir/similarity.csv and .html.

    Inputs:
    - modules: submission name -> path of its module (read as text only)
    - boilerplate_source: the kit's module text (kit_source()), discounted
    - out_dir: folder of the two files (created if needed)

    Returns:
    - the ranked pairs, as the CSV rows (dicts of CSV_COLUMNS)
    """
    texts, notes, skipped = {}, {}, {}
    for name, path in modules.items():
        text, note = read_module(path)
        if text is None:
            skipped[name] = note
            logging.warning("similarity: %s %s", name, note)
        else:
            texts[name], notes[name] = text, note
    if len(texts) < 2:
        skipped.update({name: "no other module to compare with" for name in texts})
        detector, pairs = None, []
    else:
        detector = _detector(fingerprints(texts, boilerplate_source))
        pairs = rank_pairs(detector, notes)
    write_csv(Path(out_dir) / FILES[0], pairs, skipped)
    write_html(Path(out_dir) / FILES[1], detector, skipped)
    return pairs


def enable(options) -> None:
    """Set the grader up to collect modules (options.similarity_modules) unless off or under 2 submissions."""
    wanted = not getattr(options, "no_similarity", False) and len(options.submissions) >= 2
    options.similarity_modules = {} if wanted else None


def keep_module(options, name: str, module: Optional[Path]) -> None:
    """
    The grader's hook, right after a submission is unpacked and before any of
    its code runs (so the text is what was handed in): keep the module's bytes.
    """
    store = getattr(options, "similarity_modules", None)
    if store is not None and module is not None:
        try:
            with open(module, "rb") as f:
                store[name] = f.read(MAX_BYTES + 1)  # one byte over: read_module reports it as too large
        except OSError:
            pass  # left out of the report; the grade says what is wrong with the module


def batch_report(options, out_dir: Path) -> str:
    """
    The report over the modules the grader kept, against the kit made from
    this repository's reference module.

    Returns:
    - a line for the grader to print ('' when off); a failure is that line,
      never an exception: the grades are written already and must stand
    """
    store = getattr(options, "similarity_modules", None)
    if store is None:
        return ""
    try:
        with tempfile.TemporaryDirectory(prefix="similarity-") as tmp:
            paths = {name: Path(tmp) / f"{index}.py" for index, name in enumerate(sorted(store))}
            for name, path in paths.items():
                path.write_bytes(store[name])
            pairs = similarity_report(paths, kit_source(), out_dir)
    except Exception as error:  # noqa: BLE001 - see Returns
        return f"WARNING: no similarity report ({type(error).__name__}: {error})"
    top = f" (most similar: {pairs[0]['name_a']}, {pairs[0]['name_b']}: {pairs[0]['max']:.0%})" if pairs else ""
    return f"wrote {Path(out_dir) / FILES[0]} and {FILES[1]}{top}"
