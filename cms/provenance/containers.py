"""An XMP packet written into an image file as it is: no pixel is decoded or re-encoded.

Willow re-encodes every rendition and keeps no XMP, and re-encoding an original to add a
packet would cost time and quality. So the packet goes into the file's own container: a
JPEG APP1 segment, a PNG iTXt chunk, a WebP XMP chunk (with the VP8X header that declares
it), a GIF application extension, or an AVIF/HEIF ``mime`` item that describes the primary
image (``cdsc``). An XMP packet already there is replaced, so a file never says two things.
A file that carries a C2PA manifest is refused (``HasManifest``): any change would break it.

``embed_xmp(src, dst, packet)`` copies ``src`` to ``dst`` with the packet, streaming the
image data, and returns the format's name. Both must be binary files; ``src`` seekable.
"""

from __future__ import annotations

import shutil
import struct
import zlib
from typing import IO

XMP_JPEG_ID = b"http://ns.adobe.com/xap/1.0/\x00"
XMP_JPEG_EXTENSION_ID = b"http://ns.adobe.com/xmp/extension/\x00"
XMP_PNG_KEYWORD = b"XML:com.adobe.xmp"
XMP_MIME = b"application/rdf+xml"
# The UUID of the box C2PA stores its manifest store in, in ISO BMFF files.
C2PA_BMFF_UUID = bytes.fromhex("d8fec3d61b0e483c92975828877ec481")
# Segments, chunks and boxes before the image data are read whole; a bigger one is refused
# rather than held in memory.
MAX_HEADER_BYTES = 16 * 1024 * 1024


class UnsupportedImage(ValueError):
    """The file is in no format handled here, or not well formed enough to mark."""


class HasManifest(UnsupportedImage):
    """The file carries a C2PA manifest, whose hashes any change would break."""


def sniff(head: bytes) -> str | None:
    """The container format of a file that starts with ``head`` (16 bytes suffice)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[4:8] == b"ftyp":
        return "isobmff"  # AVIF, HEIC
    return None


def embed_xmp(src: IO[bytes], dst: IO[bytes], packet: bytes) -> str:
    """Copy ``src`` (from its start) into ``dst`` with ``packet`` as its XMP."""
    src.seek(0)
    kind = sniff(src.read(16))
    src.seek(0)
    writers = {"jpeg": _jpeg, "png": _png, "webp": _webp, "gif": _gif, "isobmff": _isobmff}
    if kind is None:
        raise UnsupportedImage("not a JPEG, PNG, WebP, GIF, AVIF or HEIF file")
    try:
        writers[kind](src, dst, packet)
    except (struct.error, IndexError) as exc:
        raise UnsupportedImage(f"a malformed {kind} file ({exc})") from None
    return kind


def _read(src: IO[bytes], size: int) -> bytes:
    if size > MAX_HEADER_BYTES:
        raise UnsupportedImage(f"a header part of {size} bytes")
    data = src.read(size)
    if len(data) != size:
        raise UnsupportedImage("the file ends early")
    return data


def _copy(src: IO[bytes], dst: IO[bytes], size: int) -> None:
    """Copy exactly ``size`` bytes, in chunks."""
    while size > 0:
        chunk = src.read(min(size, 1024 * 1024))
        if not chunk:
            raise UnsupportedImage("the file ends early")
        dst.write(chunk)
        size -= len(chunk)


# JPEG ------------------------------------------------------------------------------------
def _jpeg(src: IO[bytes], dst: IO[bytes], packet: bytes) -> None:
    payload = XMP_JPEG_ID + packet
    if len(payload) + 2 > 0xFFFF:
        raise UnsupportedImage("the XMP packet is too long for one JPEG segment")
    soi = _read(src, 2)
    leading: list[bytes] = []  # JFIF APP0 and Exif APP1 stay first, as their specs ask
    rest: list[bytes] = []
    while True:
        marker = _read(src, 2)
        if marker[0] != 0xFF:
            raise UnsupportedImage("a JPEG segment without its marker")
        while marker[1] == 0xFF:  # fill bytes
            marker = b"\xff" + _read(src, 1)
        code = marker[1]
        if code in (0xDA, 0xD9):  # start of scan, end of image: the headers are over
            break
        if code == 0x01 or 0xD0 <= code <= 0xD7:  # no length
            rest.append(marker)
            continue
        length = _read(src, 2)
        body = _read(src, struct.unpack(">H", length)[0] - 2)
        if code == 0xEB and body[:2] == b"JP":
            raise HasManifest("the JPEG carries a C2PA manifest (JUMBF)")
        if code == 0xE1 and body.startswith((XMP_JPEG_ID, XMP_JPEG_EXTENSION_ID)):
            continue  # the XMP this file had is replaced
        segment = marker + length + body
        if not rest and (code == 0xE0 or (code == 0xE1 and body.startswith(b"Exif\x00"))):
            leading.append(segment)
        else:
            rest.append(segment)
    dst.write(soi)
    dst.writelines(leading)
    dst.write(b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload)
    dst.writelines(rest)
    dst.write(marker)
    shutil.copyfileobj(src, dst, 1024 * 1024)


# PNG -------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(src: IO[bytes], dst: IO[bytes], packet: bytes) -> None:
    # iTXt: keyword, uncompressed, no language tag or translated keyword, then the text.
    xmp = _png_chunk(b"iTXt", XMP_PNG_KEYWORD + b"\x00\x00\x00\x00\x00" + packet)
    dst.write(_read(src, 8))
    written = False
    while True:
        header = src.read(8)
        if not header:
            break  # some writers leave out IEND; what came before is kept
        if len(header) < 8:
            raise UnsupportedImage("the file ends early")
        length, kind = struct.unpack(">I4s", header)
        if kind == b"caBX":
            raise HasManifest("the PNG carries a C2PA manifest (caBX)")
        if kind == b"iTXt" and length <= MAX_HEADER_BYTES:
            rest = _read(src, length + 4)
            if not rest.startswith(XMP_PNG_KEYWORD + b"\x00"):
                dst.write(header + rest)
        else:
            dst.write(header)
            _copy(src, dst, length + 4)
        if kind == b"IHDR" and not written:
            dst.write(xmp)  # before any image data, where every reader looks
            written = True
        if kind == b"IEND":
            break
    if not written:
        raise UnsupportedImage("a PNG without its IHDR chunk")
    shutil.copyfileobj(src, dst, 1024 * 1024)


# WebP ------------------------------------------------------------------------------------
VP8X_XMP = 0x04
VP8X_ALPHA = 0x10


def _webp_chunks(src: IO[bytes], end: int) -> list[tuple[bytes, int, int]]:
    """(fourcc, payload offset, payload size) of each chunk, found by seeking."""
    chunks = []
    position = 12
    while position + 8 <= end:
        src.seek(position)
        fourcc, size = struct.unpack("<4sI", _read(src, 8))
        chunks.append((fourcc, position + 8, size))
        position += 8 + size + (size & 1)
    return chunks


def _webp_canvas(src: IO[bytes], fourcc: bytes, offset: int, size: int) -> tuple[int, int, int]:
    """(width, height, flags) of a simple (lossy or lossless) WebP's one image."""
    src.seek(offset)
    head = _read(src, min(size, 30))
    if fourcc == b"VP8 ":
        if head[3:6] != b"\x9d\x01\x2a":
            raise UnsupportedImage("a VP8 chunk without a key frame")
        width, height = struct.unpack("<HH", head[6:10])
        return width & 0x3FFF, height & 0x3FFF, 0
    if fourcc == b"VP8L":
        if head[0] != 0x2F:
            raise UnsupportedImage("a VP8L chunk without its signature")
        bits = struct.unpack("<I", head[1:5])[0]
        alpha = VP8X_ALPHA if (bits >> 28) & 1 else 0
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, alpha
    raise UnsupportedImage(f"a WebP starting with a {fourcc!r} chunk")


def _webp(src: IO[bytes], dst: IO[bytes], packet: bytes) -> None:
    src.seek(0, 2)
    end = src.tell()
    src.seek(4)
    riff_end = min(end, 8 + struct.unpack("<I", _read(src, 4))[0])
    chunks = _webp_chunks(src, riff_end)
    if not chunks:
        raise UnsupportedImage("a WebP without chunks")
    if any(fourcc == b"C2PA" for fourcc, _, _ in chunks):
        raise HasManifest("the WebP carries a C2PA manifest")
    xmp = b"XMP " + struct.pack("<I", len(packet)) + packet + b"\x00" * (len(packet) & 1)
    first = chunks[0][0]
    if first == b"VP8X":
        src.seek(chunks[0][1])
        vp8x = bytearray(_read(src, 10))
        vp8x[0] |= VP8X_XMP
        head = b"VP8X" + struct.pack("<I", 10) + bytes(vp8x)
        kept = [chunk for chunk in chunks[1:] if chunk[0] != b"XMP "]
    else:
        width, height, flags = _webp_canvas(src, *chunks[0])
        canvas = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        head = b"VP8X" + struct.pack("<I", 10) + bytes([flags | VP8X_XMP, 0, 0, 0]) + canvas
        kept = chunks
    size = 4 + len(head) + sum(8 + s + (s & 1) for _, _, s in kept) + len(xmp)
    dst.write(b"RIFF" + struct.pack("<I", size) + b"WEBP" + head)
    for _fourcc, offset, length in kept:
        src.seek(offset - 8)
        _copy(src, dst, 8 + length + (length & 1))
    dst.write(xmp)  # last, after the image data, as the container's order asks


# GIF -------------------------------------------------------------------------------------
# XMP's GIF embedding: the packet as raw bytes in an application extension, followed by a
# "magic trailer" that makes any data sub-block walk land on the block terminator.
GIF_XMP_TRAILER = b"\x01" + bytes(range(0xFF, -1, -1)) + b"\x00"


def _gif(src: IO[bytes], dst: IO[bytes], packet: bytes) -> None:
    header = _read(src, 13)
    flags = header[10]
    table = 3 * (2 ** ((flags & 0x07) + 1)) if flags & 0x80 else 0
    dst.write(header + _read(src, table))
    dst.write(b"\x21\xff\x0bXMP DataXMP" + packet + GIF_XMP_TRAILER)
    shutil.copyfileobj(src, dst, 1024 * 1024)


# ISO BMFF: AVIF, HEIF --------------------------------------------------------------------
def _box_header(data: bytes, offset: int, end: int) -> tuple[bytes, int, int]:
    """(type, header size, box size) of the box at ``offset`` in ``data``."""
    size, kind = struct.unpack_from(">I4s", data, offset)
    header = 8
    if size == 1:
        size = struct.unpack_from(">Q", data, offset + 8)[0]
        header = 16
    elif size == 0:
        size = end - offset
    if size < header or offset + size > end:
        raise UnsupportedImage(f"a {kind!r} box of a wrong size")
    return kind, header, size


def _children(data: bytes, start: int, end: int) -> list[tuple[bytes, int, int, int]]:
    """(type, offset, header size, box size) of the boxes in data[start:end]."""
    boxes = []
    while start < end:
        kind, header, size = _box_header(data, start, end)
        boxes.append((kind, start, header, size))
        start += size
    return boxes


def _box(kind: bytes, payload: bytes, version: int | None = None, flags: int = 0) -> bytes:
    if version is not None:
        payload = struct.pack(">I", (version << 24) | flags) + payload
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _uint(data: bytes, offset: int, size: int) -> tuple[int, int]:
    return int.from_bytes(data[offset : offset + size], "big"), offset + size


def _top_level_boxes(src: IO[bytes], end: int) -> list[tuple[bytes, int, int, int]]:
    boxes = []
    position = 0
    while position < end:
        src.seek(position)
        head = src.read(16)
        if len(head) < 8:
            raise UnsupportedImage("the file ends early")
        kind, header, size = _box_header(head + bytes(16 - len(head)), 0, end - position)
        boxes.append((kind, position, header, size))
        position += size
    return boxes


class _Iloc:
    """An item location box, parsed and written back with room for one more item."""

    def __init__(self, data: bytes) -> None:
        self.version = data[0]
        offset = 4
        sizes = data[offset : offset + 2]
        offset += 2
        self.offset_size, self.length_size = sizes[0] >> 4, sizes[0] & 0x0F
        self.base_offset_size = sizes[1] >> 4
        self.index_size = sizes[1] & 0x0F if self.version in (1, 2) else 0
        id_size = 2 if self.version < 2 else 4
        count, offset = _uint(data, offset, id_size)
        self.items = []
        for _ in range(count):
            item_id, offset = _uint(data, offset, id_size)
            method = 0
            if self.version in (1, 2):
                value, offset = _uint(data, offset, 2)
                method = value & 0x0F
            reference, offset = _uint(data, offset, 2)
            base, offset = _uint(data, offset, self.base_offset_size)
            extent_count, offset = _uint(data, offset, 2)
            extents = []
            for _ in range(extent_count):
                index, offset = _uint(data, offset, self.index_size)
                extent_offset, offset = _uint(data, offset, self.offset_size)
                length, offset = _uint(data, offset, self.length_size)
                extents.append([index, extent_offset, length])
            self.items.append(
                {"id": item_id, "method": method, "reference": reference, "base": base,
                 "extents": extents}
            )  # fmt: skip

    def shift(self, after: int, delta: int) -> None:
        """Move every file offset at or past ``after`` by ``delta`` bytes."""
        for item in self.items:
            if item["method"] != 0 or item["reference"] != 0:
                continue  # in the meta box's idat, in another item, or in another file
            if item["base"] >= after:
                item["base"] += delta
                continue
            for extent in item["extents"]:
                if item["base"] + extent[1] >= after:
                    extent[1] += delta

    def serialize(self) -> bytes:
        ids = [item["id"] for item in self.items]
        version = self.version
        if max(ids, default=0) > 0xFFFF or len(ids) > 0xFFFF:
            version = 2
        biggest_offset = max(
            [item["base"] for item in self.items]
            + [extent[1] for item in self.items for extent in item["extents"]],
            default=0,
        )
        biggest_length = max(
            (extent[2] for item in self.items for extent in item["extents"]), default=0
        )
        # Room for the offsets once moved: 8 bytes only when 4 would not do.
        offset_size = 8 if biggest_offset > 0xFFFF0000 else max(4, self.offset_size)
        length_size = 8 if biggest_length > 0xFFFF0000 else max(4, self.length_size)
        base_size = self.base_offset_size
        if base_size and biggest_offset > 0xFFFF0000:
            base_size = 8
        id_size = 2 if version < 2 else 4
        out = bytearray()
        out += bytes([(offset_size << 4) | length_size, (base_size << 4) | self.index_size])
        out += len(self.items).to_bytes(id_size, "big")
        for item in self.items:
            out += item["id"].to_bytes(id_size, "big")
            if version in (1, 2):
                out += item["method"].to_bytes(2, "big")
            out += item["reference"].to_bytes(2, "big")
            out += item["base"].to_bytes(base_size, "big")
            out += len(item["extents"]).to_bytes(2, "big")
            for index, extent_offset, length in item["extents"]:
                out += index.to_bytes(self.index_size, "big")
                out += extent_offset.to_bytes(offset_size, "big")
                out += length.to_bytes(length_size, "big")
        return _box(b"iloc", bytes(out), version=version)


def _infe_entries(data: bytes) -> tuple[int, list[tuple[int, bytes, bool]]]:
    """The iinf box's version and its entries: (item id, infe box, is XMP)."""
    version = data[0]
    offset = 4 + (2 if version == 0 else 4)
    entries = []
    for kind, start, header, size in _children(data, offset, len(data)):
        box = data[start : start + size]
        if kind != b"infe":
            continue
        body = box[header:]
        infe_version = body[0]
        if infe_version < 2:
            raise UnsupportedImage("an item info entry older than version 2")
        id_size = 2 if infe_version == 2 else 4
        item_id, position = _uint(body, 4, id_size)
        item_type = body[position + 2 : position + 6]
        is_xmp = False
        if item_type == b"mime":
            name_end = body.index(b"\x00", position + 6)
            content_type = body[name_end + 1 : body.index(b"\x00", name_end + 1)]
            is_xmp = content_type == XMP_MIME
        entries.append((item_id, box, is_xmp))
    return version, entries


def _iref_references(data: bytes) -> tuple[int, list[tuple[bytes, int, list[int]]]]:
    version = data[0]
    id_size = 2 if version == 0 else 4
    references = []
    for kind, start, header, size in _children(data, 4, len(data)):
        body = data[start + header : start + size]
        from_id, position = _uint(body, 0, id_size)
        count, position = _uint(body, position, 2)
        to_ids = []
        for _ in range(count):
            to_id, position = _uint(body, position, id_size)
            to_ids.append(to_id)
        references.append((kind, from_id, to_ids))
    return version, references


def _iref(version: int, references: list[tuple[bytes, int, list[int]]]) -> bytes:
    if any(max([from_id, *to_ids]) > 0xFFFF for _, from_id, to_ids in references):
        version = 1
    id_size = 2 if version == 0 else 4
    boxes = b"".join(
        _box(
            kind,
            from_id.to_bytes(id_size, "big")
            + len(to_ids).to_bytes(2, "big")
            + b"".join(to_id.to_bytes(id_size, "big") for to_id in to_ids),
        )
        for kind, from_id, to_ids in references
        if to_ids
    )
    return _box(b"iref", boxes, version=version)


def _isobmff(src: IO[bytes], dst: IO[bytes], packet: bytes) -> None:
    src.seek(0, 2)
    end = src.tell()
    boxes = _top_level_boxes(src, end)
    for kind, offset, _header, _size in boxes:
        if kind == b"uuid":
            src.seek(offset + 8)
            if src.read(16) == C2PA_BMFF_UUID:
                raise HasManifest("the file carries a C2PA manifest")
    metas = [box for box in boxes if box[0] == b"meta"]
    if not metas:
        raise UnsupportedImage("an ISO BMFF file without a meta box")
    _, meta_offset, meta_header, meta_size = metas[0]
    src.seek(meta_offset)
    meta = _read(src, meta_size)
    children = _children(meta, meta_header + 4, meta_size)
    found = {kind: meta[start + header : start + size] for kind, start, header, size in children}
    if b"pitm" not in found or b"iinf" not in found or b"iloc" not in found:
        raise UnsupportedImage("a meta box without its primary item, item infos or locations")
    pitm = found[b"pitm"]
    primary = _uint(pitm, 4, 2 if pitm[0] == 0 else 4)[0]
    iinf_version, entries = _infe_entries(found[b"iinf"])
    iloc = _Iloc(found[b"iloc"])
    old_xmp = {item_id for item_id, _, is_xmp in entries if is_xmp}
    iref_version, references = _iref_references(found[b"iref"]) if b"iref" in found else (0, [])
    item_id = max([primary, *(e[0] for e in entries), *(i["id"] for i in iloc.items)]) + 1
    # The new item: a MIME item holding XMP, which describes (cdsc) the primary image.
    infe_version = 2 if item_id <= 0xFFFF else 3
    infe = _box(
        b"infe",
        item_id.to_bytes(2 if infe_version == 2 else 4, "big")
        + b"\x00\x00mime"
        + b"XMP\x00"
        + XMP_MIME
        + b"\x00",
        version=infe_version,
        flags=1,  # hidden: it is not an image to show
    )
    kept = [box for item, box, _ in entries if item not in old_xmp] + [infe]
    if len(kept) > 0xFFFF:
        iinf_version = 1
    iinf = _box(
        b"iinf",
        len(kept).to_bytes(2 if iinf_version == 0 else 4, "big") + b"".join(kept),
        version=iinf_version,
    )
    references = [
        (kind, from_id, [to for to in to_ids if to not in old_xmp])
        for kind, from_id, to_ids in references
        if from_id not in old_xmp
    ] + [(b"cdsc", item_id, [primary])]
    iref = _iref(iref_version, references)
    # The old packets' bytes are blanked where they lie, so the file holds one packet only.
    blank = [
        (item["base"] + extent[1], extent[2])
        for item in iloc.items
        if item["id"] in old_xmp and item["method"] == 0 and item["reference"] == 0
        for extent in item["extents"]
    ]
    iloc.items = [item for item in iloc.items if item["id"] not in old_xmp]
    iloc.items.append(
        {"id": item_id, "method": 0, "reference": 0, "base": 0, "extents": [[0, 0, len(packet)]]}
    )

    def new_meta() -> bytes:
        parts = []
        for kind, start, _header, size in children:
            if kind == b"iinf":
                parts.append(iinf + (b"" if b"iref" in found else iref))
            elif kind == b"iloc":
                parts.append(iloc.serialize())
            elif kind == b"iref":
                parts.append(iref)
            else:
                parts.append(meta[start : start + size])
        return _box(b"meta", meta[meta_header : meta_header + 4] + b"".join(parts))

    meta_end = meta_offset + meta_size
    delta = len(new_meta()) - meta_size  # the field sizes are fixed: only values change
    iloc.shift(meta_end, delta)
    xmp_offset = end + delta + 8  # in an mdat box of its own, after everything else
    iloc.items[-1]["extents"][0][1] = xmp_offset
    meta_bytes = new_meta()
    if len(meta_bytes) - meta_size != delta:
        raise UnsupportedImage("the item locations changed size")
    for kind, offset, header, size in boxes:
        src.seek(offset)
        if offset == meta_offset:
            dst.write(meta_bytes)
        elif header == 8 and struct.unpack(">I", src.read(4))[0] == 0:
            # The last box ran "to the end of the file", which it no longer does.
            if size > 0xFFFFFFFF:
                raise UnsupportedImage("a last box too large to be followed")
            dst.write(struct.pack(">I", size) + kind)
            src.seek(offset + 8)
            _copy(src, dst, size - 8)
        else:
            src.seek(offset)
            _copy_blanking(src, dst, offset, size, blank)
    dst.write(_box(b"mdat", packet))


def _copy_blanking(
    src: IO[bytes], dst: IO[bytes], offset: int, size: int, blank: list[tuple[int, int]]
) -> None:
    """Copy ``size`` bytes from ``offset``, with the ``blank`` ranges (offset, length)
    written as spaces (XMP's own padding)."""
    end = offset + size
    for start, length in sorted(blank):
        start, stop = max(start, offset), min(start + length, end)
        if start >= stop:
            continue
        _copy(src, dst, start - offset)
        src.seek(stop - start, 1)
        dst.write(b" " * (stop - start))
        offset = stop
    _copy(src, dst, end - offset)
