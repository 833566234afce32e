"""Markup -> running text converters for the EKVA training corpus.

Each converter takes the source text (str) and returns plain text with
paragraphs separated by blank lines. They are deliberately simple, pure-Python
and deterministic (no dependency on installed groff/pod2text/docutils
versions), so the same packages always give the same bytes.
"""
from __future__ import annotations

import html
import re
from html.parser import HTMLParser

# --------------------------------------------------------------------------
# common clean-up


_WS_RUN = re.compile(r"[ \t\f\v\u00a0]+")


def tidy(text: str, keep_tabs: bool = False) -> str:
    """Normalise newlines, strip trailing blanks, collapse >1 blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not keep_tabs:
        text = text.replace("\t", "    ")
    text = "".join(ch for ch in text if ch == "\n" or ch >= " " or ch == "\t")
    lines = [ln.rstrip() for ln in text.split("\n")]
    out: list[str] = []
    blank = 0
    for ln in lines:
        if not ln.strip():
            blank += 1
            continue
        if out and blank:
            out.append("")
        blank = 0
        out.append(ln)
    return "\n".join(out).strip("\n") + "\n" if out else ""


# --------------------------------------------------------------------------
# HTML


_BLOCK = {
    "p", "div", "section", "article", "br", "li", "ul", "ol", "dl", "dt", "dd",
    "h1", "h2", "h3", "h4", "h5", "h6", "table", "tr", "blockquote", "pre",
    "hr", "figure", "figcaption", "header", "footer", "main", "aside", "td", "th",
}
_SKIP_TAGS = {"script", "style", "head", "nav", "noscript", "svg", "button", "form", "select", "title"}
_SKIP_CLASSES = {
    # sphinx
    "sphinxsidebar", "related", "footer", "headerlink", "sphinxsidebarwrapper",
    "clearer", "highlight-none-notranslate",
    # docbook (postgresql, debian-handbook, debian-reference)
    "navheader", "navfooter", "toc", "docnav", "breadcrumbs", "legalnotice",
    # doxygen / misc
    "navigation", "menu", "sidebar", "nav", "topnav", "copyright", "footnotes-nav",
}
_VOID = {"br", "hr", "img", "meta", "link", "input", "col", "area", "base", "wbr", "source", "param"}


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_stack: list[str] = []  # tag names that opened a skipped region
        self.pre = 0
        self.open_tags: list[tuple[str, bool]] = []  # (tag, started_skip)

    def handle_starttag(self, tag, attrs):
        if tag in _VOID:
            if tag in ("br", "hr") and not self.skip_stack:
                self.parts.append("\n")
            return
        cls = ""
        ident = ""
        for k, v in attrs:
            if k == "class" and v:
                cls = v
            elif k == "id" and v:
                ident = v
        skip = tag in _SKIP_TAGS or any(c in _SKIP_CLASSES for c in cls.split()) or ident in ("toc", "sidebar", "navbar", "footer")
        self.open_tags.append((tag, skip))
        if skip:
            self.skip_stack.append(tag)
            return
        if self.skip_stack:
            return
        if tag == "pre":
            self.pre += 1
            self.parts.append("\n\n")
        elif tag in ("h1", "h2", "h3", "h4", "h5", "h6", "p", "table", "blockquote", "dl", "ul", "ol", "section", "figure"):
            self.parts.append("\n\n")
        elif tag in _BLOCK:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_endtag(self, tag):
        if tag in _VOID:
            return
        # pop to the matching open tag (tolerate sloppy html)
        for i in range(len(self.open_tags) - 1, -1, -1):
            if self.open_tags[i][0] == tag:
                popped = self.open_tags[i:]
                del self.open_tags[i:]
                for t, was_skip in reversed(popped):
                    if was_skip and self.skip_stack:
                        self.skip_stack.pop()
                    elif not self.skip_stack and t == "pre" and self.pre:
                        self.pre -= 1
                        self.parts.append("\n\n")
                break
        else:
            return
        if self.skip_stack:
            return
        if tag in _BLOCK:
            self.parts.append("\n\n" if tag in ("p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "pre", "blockquote") else "\n")

    def handle_data(self, data):
        if self.skip_stack:
            return
        if self.pre:
            self.parts.append(data)
        else:
            self.parts.append(_WS_RUN.sub(" ", data.replace("\n", " ")))


def html_to_text(src: str) -> str:
    p = _Extractor()
    try:
        p.feed(src)
        p.close()
    except Exception:  # noqa: BLE001 - malformed html: keep what we have
        pass
    text = "".join(p.parts)
    lines = []
    for ln in text.split("\n"):
        s = ln.rstrip()
        # lines that are not inside <pre> got their whitespace collapsed; strip leading space there
        lines.append(s[1:] if s.startswith(" ") and not s.startswith("  ") else s)
    text = "\n".join(lines)
    text = text.replace("\u00b6", "")  # sphinx permalink pilcrows
    return tidy(text)


# --------------------------------------------------------------------------
# reStructuredText (Sphinx _sources)


_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+_:.])\1{2,}\s*$")
_RST_ROLE = re.compile(r":[A-Za-z][\w:+.-]*:`([^`]*)`")
_RST_LINK = re.compile(r"`([^`<]*?)\s*<[^`>]*>`__?")
_RST_REF = re.compile(r"`([^`]+)`_{1,2}")
_RST_LIT = re.compile(r"``([^`]+)``")
_RST_INTERP = re.compile(r"`([^`]+)`")
_RST_SUBST = re.compile(r"\|([A-Za-z][\w -]*)\|_?")
_RST_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+([\w:-]+)::\s*(.*)$")
_RST_TARGET = re.compile(r"^\s*\.\.\s+(_[^:]+:|\[[^\]]+\]|\|[^|]+\|).*$")
_RST_COMMENT = re.compile(r"^\s*\.\.(\s.*)?$")
_KEEP_BODY_DIRECTIVES = {
    "note", "warning", "tip", "important", "caution", "seealso", "attention", "hint", "danger", "error",
    "admonition", "code-block", "code", "sourcecode", "literalinclude", "deprecated", "versionadded",
    "versionchanged", "describe", "function", "method", "class", "attribute", "data", "exception",
    "c:function", "c:macro", "c:type", "c:member", "c:struct", "py:function", "py:method", "py:class",
    "py:attribute", "py:data", "py:exception", "cmdoption", "option", "envvar", "productionlist",
    "epigraph", "topic", "sidebar", "rubric", "kernel-doc", "parsed-literal", "glossary", "table",
    "list-table", "csv-table", "container", "decorator", "coroutinefunction", "abstractmethod",
    "classmethod", "staticmethod", "opcode", "pdbcommand", "index", "only", "highlight",
}


_VERSION_DIRECTIVES = {
    "versionadded": "New in version {}.",
    "versionchanged": "Changed in version {}.",
    "deprecated": "Deprecated since version {}.",
    "deprecated-removed": "Deprecated since version {}.",
}


def _rst_inline(s: str) -> str:
    s = _RST_ROLE.sub(lambda m: re.sub(r"\s*<[^>]*>$", "", m.group(1)).lstrip("~!"), s)
    s = _RST_LINK.sub(lambda m: m.group(1), s)
    s = _RST_LIT.sub(lambda m: m.group(1), s)
    s = _RST_REF.sub(lambda m: m.group(1), s)
    s = _RST_INTERP.sub(lambda m: m.group(1), s)
    s = _RST_SUBST.sub(lambda m: m.group(1), s)
    s = s.replace("\\*", "*").replace("\\_", "_")
    s = re.sub(r"(?<!\*)\*\*([^*]+)\*\*", r"\1", s)
    s = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?!\w)", r"\1", s)
    return s


def rst_to_text(src: str) -> str:
    lines = src.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    i = 0
    n = len(lines)
    while i < n:
        ln = lines[i]
        if _RST_UNDERLINE.match(ln):
            # overline/underline of a section title
            i += 1
            continue
        m = _RST_DIRECTIVE.match(ln)
        if m:
            indent, name, arg = m.group(1), m.group(2).lower(), m.group(3)
            base = len(indent)
            keep = name in _KEEP_BODY_DIRECTIVES
            if name in _VERSION_DIRECTIVES:
                out.append(indent + _VERSION_DIRECTIVES[name].format(_rst_inline(arg).strip()))
            elif keep and arg and name not in ("index", "highlight", "only", "literalinclude", "kernel-doc", "code-block", "code", "sourcecode"):
                out.append(indent + _rst_inline(arg))
            i += 1
            # skip option lines (":maxdepth: 2") and, for dropped directives, the body
            while i < n:
                nxt = lines[i]
                if not nxt.strip():
                    if keep:
                        break
                    # a blank line inside a dropped body: continue if next non-blank is still indented
                    j = i + 1
                    while j < n and not lines[j].strip():
                        j += 1
                    if j < n and (len(lines[j]) - len(lines[j].lstrip())) > base:
                        i = j
                        continue
                    break
                ind = len(nxt) - len(nxt.lstrip())
                if ind <= base:
                    break
                if re.match(r"^\s*:[\w -]+:(\s.*)?$", nxt) and not keep:
                    i += 1
                    continue
                if re.match(r"^\s*:[\w -]+:(\s.*)?$", nxt):
                    i += 1
                    continue
                if not keep:
                    i += 1
                    continue
                break
            continue
        if _RST_TARGET.match(ln):
            i += 1
            continue
        if _RST_COMMENT.match(ln):
            # comment block: the line and its indented continuation
            base = len(ln) - len(ln.lstrip())
            i += 1
            while i < n and lines[i].strip() and (len(lines[i]) - len(lines[i].lstrip())) > base:
                i += 1
            continue
        if ln.rstrip().endswith("::") and not ln.strip().startswith(".."):
            ln = ln.rstrip()[:-1] if not ln.rstrip() == "::" else ""
        # table borders
        if re.match(r"^\s*[+|][-=+|]+[+|]?\s*$", ln) or re.match(r"^\s*=+( +=+)+\s*$", ln):
            i += 1
            continue
        out.append(_rst_inline(ln))
        i += 1
    return tidy("\n".join(out))


# --------------------------------------------------------------------------
# Markdown (rust books, node api docs)


def markdown_to_text(src: str) -> str:
    out: list[str] = []
    in_fence = False
    for ln in src.replace("\r\n", "\n").split("\n"):
        s = ln.strip()
        if s.startswith("```") or s.startswith("~~~"):
            in_fence = not in_fence
            out.append("")
            continue
        if in_fence:
            out.append(ln)
            continue
        if re.match(r"^\s*<!--.*-->\s*$", ln) or re.match(r"^\s*\[[^\]]+\]:\s*\S+", ln):
            continue
        if re.match(r"^\s*\{\{#.*\}\}\s*$", ln):  # mdbook includes
            continue
        ln = re.sub(r"!\[([^\]]*)\]\([^)]*\)", "", ln)
        ln = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", ln)
        ln = re.sub(r"\[([^\]]+)\]\[[^\]]*\]", r"\1", ln)
        ln = re.sub(r"</?[A-Za-z][^>]*>", "", ln)
        ln = re.sub(r"^(\s*)#{1,6}\s+", r"\1", ln)
        ln = re.sub(r"(\*\*|__)(.+?)\1", r"\2", ln)
        ln = re.sub(r"`([^`]+)`", r"\1", ln)
        if re.match(r"^\s*[-=*_]{3,}\s*$", ln):
            continue
        if re.match(r"^\s*\|?[\s:-]+\|[\s:|-]*$", ln):  # table separator row
            continue
        out.append(html.unescape(ln))
    return tidy("\n".join(out))


# --------------------------------------------------------------------------
# man pages (roff)


_ROFF_ESC = [
    (re.compile(r"\\f(\[[^\]]*\]|\(..|.)"), ""),
    (re.compile(r"\\s[+-]?\d"), ""),
    (re.compile(r"\\\*\((lq|rq)"), '"'),
    (re.compile(r"\\\*\[[^\]]*\]"), ""),
    (re.compile(r"\\\*\(..|\\\*."), ""),
    (re.compile(r"\\\((lq|rq|dq)"), '"'),
    (re.compile(r"\\\((oq|cq|aq)"), "'"),
    (re.compile(r"\\\((em|en)"), "--"),
    (re.compile(r"\\\((bu)"), "*"),
    (re.compile(r"\\\((co)"), "(c)"),
    (re.compile(r"\\\((mu)"), "x"),
    (re.compile(r"\\\((ga)"), "`"),
    (re.compile(r"\\\((ha)"), "^"),
    (re.compile(r"\\\((ti)"), "~"),
    (re.compile(r"\\\((rs)"), "\\\\"),
    (re.compile(r"\\\((ba)"), "|"),
    (re.compile(r"\\\((>=)"), ">="),
    (re.compile(r"\\\((<=)"), "<="),
    (re.compile(r"\\\((!=)"), "!="),
    (re.compile(r"\\\((->)"), "->"),
    (re.compile(r"\\\((<-)"), "<-"),
    (re.compile(r"\\\((pl)"), "+"),
    (re.compile(r"\\\((mi)"), "-"),
    (re.compile(r"\\\((eq)"), "="),
    (re.compile(r"\\\(.."), ""),
    (re.compile(r"\\\[[^\]]*\]"), ""),
    (re.compile(r"\\[&|^%:]"), ""),
    (re.compile(r"\\[-]"), "-"),
    (re.compile(r"\\[e\\]"), "\\\\"),
    (re.compile(r"\\[ ~0]"), " "),
    (re.compile(r"\\c$"), ""),
    (re.compile(r"\\n\[[^\]]*\]|\\n\(..|\\n."), ""),
    (re.compile(r"\\[hvwlL]'[^']*'"), ""),
    (re.compile(r"\\'"), "'"),
    (re.compile(r"\\`"), "`"),
    (re.compile(r"\\\."), "."),
]


def _roff_inline(s: str) -> str:
    for rx, rep in _ROFF_ESC:
        s = rx.sub(rep, s)
    s = s.replace("\\\\", "\\")
    return s


def _roff_args(s: str) -> list[str]:
    args, cur, q, i = [], [], False, 0
    while i < len(s):
        c = s[i]
        if c == '"':
            if q and i + 1 < len(s) and s[i + 1] == '"':
                cur.append('"')
                i += 2
                continue
            q = not q
        elif c == " " and not q:
            if cur:
                args.append("".join(cur))
                cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        args.append("".join(cur))
    return args


def roff_to_text(src: str) -> str:
    out: list[str] = []
    para: list[str] = []
    nofill = False

    def flush():
        if para:
            out.append(" ".join(para))
            para.clear()
        out.append("")

    for raw in src.replace("\r\n", "\n").split("\n"):
        if raw.startswith(".\\\"") or raw.startswith("'\\\"") or raw.startswith('\\"'):
            continue
        if raw.startswith(".") or raw.startswith("'"):
            parts = raw[1:].strip().split(None, 1)
            if not parts:
                continue
            req = parts[0]
            rest = parts[1] if len(parts) > 1 else ""
            if req in ("SH", "SS"):
                flush()
                out.append(_roff_inline(" ".join(_roff_args(rest))))
                out.append("")
            elif req in ("PP", "LP", "P", "sp", "TP", "HP", "ns"):
                flush()
            elif req == "IP":
                flush()
                a = _roff_args(rest)
                if a and a[0] not in ("\\(bu", "*", "\\[bu]", "-"):
                    para.append(_roff_inline(a[0]))
            elif req in ("B", "I", "SM", "SB"):
                t = _roff_inline(" ".join(_roff_args(rest)))
                (out.append(t) if nofill else para.append(t)) if t else None
            elif req in ("BR", "RB", "IR", "RI", "BI", "IB"):
                t = _roff_inline("".join(_roff_args(rest)))
                (out.append(t) if nofill else para.append(t)) if t else None
            elif req in ("nf", "EX"):
                flush()
                nofill = True
            elif req in ("fi", "EE"):
                nofill = False
                flush()
            elif req in ("UR", "MT"):
                pass
            elif req in ("UE", "ME"):
                pass
            elif req == "TH":
                a = _roff_args(rest)
                if a:
                    out.append(_roff_inline(a[0]) + (f"({a[1]})" if len(a) > 1 else ""))
                    out.append("")
            elif req == "TS":
                flush()
                nofill = True
            elif req == "TE":
                nofill = False
                flush()
            elif req in ("br",):
                if para:
                    out.append(" ".join(para))
                    para.clear()
            # every other request (RS, RE, in, ft, ad, na, hy, nh, ...) is layout only
            continue
        line = _roff_inline(raw)
        if nofill:
            out.append(line)
        elif line.strip():
            para.append(line.strip())
        else:
            flush()
    flush()
    return tidy("\n".join(out))


# --------------------------------------------------------------------------
# POD (perl documentation)


def _pod_inline(s: str) -> str:
    # handle X<...>, X<< ... >>, X<<< ... >>> from the inside out
    def repl(m):
        code, body = m.group(1), m.group(3)
        body = body.strip() if len(m.group(2)) > 1 else body
        if code == "E":
            ents = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&", "apos": "'"}
            if body in ents:
                return ents[body]
            if body.isdigit():
                return chr(int(body))
            if body.startswith("0x"):
                return chr(int(body, 16))
            return html.unescape(f"&{body};")
        if code in ("X", "Z"):
            return ""
        if code == "L":
            if "|" in body:
                return body.split("|", 1)[0]
            body = body.replace('"', "")
            if "/" in body and not body.startswith("http"):
                a, b = body.split("/", 1)
                return f"{b} in {a}" if a else b
            return body
        return body

    for _ in range(6):
        new = re.sub(r"([A-Z])(<<+)\s(.*?)\s>>+", lambda m: repl(m), s)
        new = re.sub(r"([A-Z])(<)([^<>]*)>", lambda m: repl(m), new)
        if new == s:
            break
        s = new
    return s


def pod_to_text(src: str) -> str:
    out: list[str] = []
    in_pod = None  # None = not decided (pure .pod files start in pod)
    skip_begin = False
    for para in re.split(r"\n\s*\n", src.replace("\r\n", "\n")):
        if not para.strip():
            continue
        first = para.lstrip("\n")
        if first.startswith("="):
            cmd, _, rest = first[1:].partition(" ")
            cmd = cmd.split("\n", 1)[0]
            rest = rest.strip()
            if cmd == "cut":
                in_pod = False
                continue
            in_pod = True
            if cmd.startswith("begin"):
                skip_begin = not rest.lower().startswith(("text", "man"))
                continue
            if cmd.startswith("end"):
                skip_begin = False
                continue
            if skip_begin or cmd in ("over", "back", "pod", "encoding", "for"):
                continue
            if cmd.startswith("head") or cmd == "item":
                t = _pod_inline(" ".join(rest.split()))
                if t and t not in ("*", "-"):
                    out.append(t)
                continue
            continue
        if in_pod is False or skip_begin:
            continue
        if para[:1] in (" ", "\t"):  # verbatim
            out.append(para.rstrip())
        else:
            out.append(_pod_inline(" ".join(para.split())))
    return tidy("\n\n".join(out))


# --------------------------------------------------------------------------
# AsciiDoc (git-doc)


def asciidoc_to_text(src: str) -> str:
    out: list[str] = []
    for ln in src.replace("\r\n", "\n").split("\n"):
        s = ln.strip()
        if re.match(r"^(ifdef|ifndef|endif|include|ifeval)::", s):
            continue
        if re.match(r"^:[\w-]+:", s) or re.match(r"^\[\[.*\]\]$", s) or re.match(r"^\[[\w ,=\"'-]*\]$", s):
            continue
        if re.match(r"^([-=~^+.*_])\1{3,}$", s) or s == "--":
            continue
        if s.startswith("//"):
            continue
        ln = re.sub(r"linkgit:([\w-]+)\[(\d)\]", r"\1(\2)", ln)
        ln = re.sub(r"link:[^\[\s]*\[([^\]]*)\]", r"\1", ln)
        ln = re.sub(r"(https?://\S+)\[([^\]]*)\]", r"\2", ln)
        ln = re.sub(r"<<[^,>]*,([^>]*)>>", r"\1", ln)
        ln = re.sub(r"<<([^>]*)>>", r"\1", ln)
        ln = re.sub(r"\{[\w-]+\}", "", ln)
        ln = re.sub(r"^(=+)\s+", "", ln)
        ln = re.sub(r"(?<![\w`])[`'](\S[^`']*?)[`'](?![\w`])", r"\1", ln)
        ln = re.sub(r"(?<!\w)\*(\S[^*]*?)\*(?!\w)", r"\1", ln)
        ln = ln.replace("+\n", "\n")
        if s == "+":
            ln = ""
        out.append(ln)
    return tidy("\n".join(out))


def plain(src: str) -> str:
    return tidy(src)


def code(src: str) -> str:
    return tidy(src, keep_tabs=True)


_VIM_TAG = re.compile(r"\*[^*\s|]+\*")
_VIM_LINK = re.compile(r"\|([^|\s]+)\|")


def vimhelp_to_text(src: str) -> str:
    """Vim help files: drop *tags*, unwrap |links|, drop code-block markers and modelines."""
    out = []
    for ln in src.replace("\r\n", "\n").split("\n"):
        if re.match(r"^\s*vim?:.*:\s*$", ln) or re.match(r"^\s*(vim|ex):\s", ln):
            continue
        if re.match(r"^[=-]{20,}\s*$", ln):
            out.append("")
            continue
        ln = _VIM_TAG.sub("", ln)
        ln = _VIM_LINK.sub(r"\1", ln)
        s = ln.rstrip()
        if s.endswith(" >") or s == ">":
            s = s[:-1].rstrip()
        if s.strip() == "<":
            s = ""
        elif s.startswith("<") and len(s) > 1 and s[1] in " \t":
            s = s[1:]
        s = re.sub(r"\s~$", "", s)
        out.append(s.rstrip())
    return tidy("\n".join(out))


CONVERTERS = {
    "html": html_to_text,
    "rst": rst_to_text,
    "md": markdown_to_text,
    "man": roff_to_text,
    "pod": pod_to_text,
    "adoc": asciidoc_to_text,
    "text": plain,
    "code": code,
    "vim": vimhelp_to_text,
}
