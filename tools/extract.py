"""Text out of documents: PDF (pypdf), DOCX (its XML, read with the standard library),
HTML (the standard library's parser), plain text; and OCR of images with tesseract.

Every input here is hostile: parsers run with size caps, and tesseract (a C program
parsing images) runs inside the code sandbox when one is available.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import shutil
import zipfile
from html.parser import HTMLParser
from xml.etree import ElementTree

from .conf import knob
from .sandbox import Limits, SandboxBusy, SandboxUnavailable, sandbox_run, sandbox_unavailable_reason

MAX_PDF_PAGES = 1000
MAX_OCR_IMAGES = 20
MAX_DOCX_XML = 64 * 1024 * 1024
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM")
W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"


class ExtractionError(Exception):
    pass


def detect_kind(data: bytes, *, content_type: str = "", name: str = "") -> str:
    """pdf | docx | html | image | text | binary, from the bytes first, then the labels."""
    head, ctype, name = data[:2048], content_type.lower(), name.lower()
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        return "docx" if _is_docx(data) else "binary"
    if head.startswith(IMAGE_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or re.match(
            rb"P[1-6]\s", head):
        return "image"
    if b"\x00" in head and not head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "binary"
    lowered = head.lstrip().lower()
    if "html" in ctype or name.endswith((".html", ".htm")) or lowered.startswith((b"<!doctype html", b"<html")):
        return "html"
    return "text"


def _is_docx(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "word/document.xml" in archive.namelist()
    except zipfile.BadZipFile:
        return False


def extract_text(data: bytes, *, content_type: str = "", name: str = "") -> tuple[str, str]:
    """(kind, text) of a document; ExtractionError when it has no extractable text."""
    kind = detect_kind(data, content_type=content_type, name=name)
    if kind == "pdf":
        return kind, pdf_text(data)
    if kind == "docx":
        return kind, docx_text(data)
    if kind == "html":
        return kind, html_text(decode(data, content_type))
    if kind == "text":
        return kind, decode(data, content_type)
    if kind == "image":
        raise ExtractionError("the file is an image: use the ocr operation to read its text")
    raise ExtractionError("unsupported file type: not a PDF, DOCX, HTML or text file")


def decode(data: bytes, content_type: str = "") -> str:
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    charset = re.search(r"charset=([\w.:-]+)", content_type or "", re.IGNORECASE)
    try:
        return data.decode(charset.group(1) if charset else "cp1252", errors="replace")
    except LookupError:
        return data.decode("latin-1")


def pdf_text(data: bytes) -> str:
    import pypdf

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ExtractionError("the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages[:MAX_PDF_PAGES]]
    except ExtractionError:
        raise
    except Exception as exc:  # pypdf raises many types on malformed files
        raise ExtractionError(f"not a readable PDF: {type(exc).__name__}: {exc}") from None
    return "\n\n".join(p.strip() for p in pages if p.strip())


def docx_text(data: bytes) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            info = archive.getinfo("word/document.xml")
            if info.file_size > MAX_DOCX_XML:
                raise ExtractionError("the DOCX document is too large once unpacked")
            root = ElementTree.fromstring(archive.read(info))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError) as exc:
        raise ExtractionError(f"not a readable DOCX file: {exc}") from None
    paragraphs = []
    for para in root.iter(f"{W}p"):
        parts = []
        for node in para.iter():
            if node.tag == f"{W}t" and node.text:
                parts.append(node.text)
            elif node.tag == f"{W}tab":
                parts.append("\t")
            elif node.tag in (f"{W}br", f"{W}cr"):
                parts.append("\n")
        paragraphs.append("".join(parts))
    return "\n".join(paragraphs).strip()


class _HTMLText(HTMLParser):
    SKIP = {"script", "style", "noscript", "template", "head", "svg"}
    BLOCK = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer", "pre",
             "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "title", "main", "nav", "aside", "dd", "dt", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self.skipping = 0
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.in_title = True
        elif tag in self.SKIP:
            self.skipping += 1
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in self.SKIP and self.skipping:
            self.skipping -= 1
        if tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title.append(data)
        elif not self.skipping:
            self.parts.append(data)


def html_text(html: str) -> str:
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in "".join(parser.parts).split("\n"))
    body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    title = " ".join("".join(parser.title).split())
    return f"{title}\n\n{body}" if title and not body.startswith(title) else body


# --- OCR ---------------------------------------------------------------------------------
def ocr_unavailable_reason() -> str | None:
    if shutil.which(knob("TESSERACT")) is None:
        return "OCR is not available on this deployment: tesseract is not installed (apt-get install tesseract-ocr)"
    return None


def _pdf_images(data: bytes) -> list[bytes]:
    import pypdf

    images: list[bytes] = []
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        for page in reader.pages[:MAX_PDF_PAGES]:
            for image in page.images:
                images.append(image.data)
                if len(images) >= MAX_OCR_IMAGES:
                    return images
    except Exception as exc:
        raise ExtractionError(f"cannot read the PDF's images: {type(exc).__name__}: {exc}") from None
    return images


async def ocr_text(data: bytes, *, content_type: str = "", name: str = "") -> str:
    reason = ocr_unavailable_reason()
    if reason:
        raise ExtractionError(reason)
    kind = detect_kind(data, content_type=content_type, name=name)
    if kind == "image":
        images = [data]
    elif kind == "pdf":
        images = await asyncio.to_thread(_pdf_images, data)
        if not images:
            raise ExtractionError("the PDF has no images to OCR (use extract_text for its text)")
    else:
        raise ExtractionError(f"OCR reads images and scanned PDFs, not {kind} files")
    texts = [await _tesseract(image) for image in images]
    return "\n\n".join(t.strip() for t in texts if t.strip())


async def _tesseract(image: bytes) -> str:
    binary = os.path.realpath(shutil.which(knob("TESSERACT")) or "tesseract")
    command = [binary, "stdin", "stdout"]
    if sandbox_unavailable_reason() is None and binary.startswith("/usr/"):
        limits = Limits.from_settings(memory_mb=max(1024, knob("SANDBOX_MEMORY_MB")), cpu_s=60,
                                      wall_s=90, output_bytes=4 * 1024 * 1024)
        try:
            run = await sandbox_run(command, stdin=image, limits=limits, env={"OMP_THREAD_LIMIT": "1"})
        except SandboxBusy:
            raise ExtractionError("the OCR sandbox is busy; try again shortly") from None
        except SandboxUnavailable as exc:
            raise ExtractionError(f"the OCR sandbox is not available: {exc}") from None
        if run.killed or run.exit_code != 0:
            raise ExtractionError(f"tesseract failed: {run.killed or run.stderr.strip()[-500:]}")
        return run.stdout
    return await _tesseract_direct(command, image)


async def _tesseract_direct(command: list[str], image: bytes) -> str:
    proc = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"OMP_THREAD_LIMIT": "1", "PATH": "/usr/bin:/bin"}, start_new_session=True)
    try:
        async with asyncio.timeout(90):
            out, err = await proc.communicate(image)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise ExtractionError(f"tesseract failed: {err.decode(errors='replace').strip()[-500:]}")
    return out.decode(errors="replace")
