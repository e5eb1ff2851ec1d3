"""The XMP packet that marks a generated image: IPTC's digital source type, the AI system
used, Karasu as the software agent, and, in a rendition, the original it was made from."""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

# IPTC's digital source types (https://cv.iptc.org/newscodes/digitalsourcetype/).
SOURCE_TYPE_URI = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED_ALGORITHMIC_MEDIA = "trainedAlgorithmicMedia"
COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA = "compositeWithTrainedAlgorithmicMedia"

SOFTWARE_AGENT = "Karasu"

NAMESPACES = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "Iptc4xmpExt": "http://iptc.org/std/Iptc4xmpExt/2008-02-29/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "xmpMM": "http://ns.adobe.com/xap/1.0/mm/",
    "stRef": "http://ns.adobe.com/xap/1.0/sType/ResourceRef#",
    "stEvt": "http://ns.adobe.com/xap/1.0/sType/ResourceEvent#",
}


@dataclass(frozen=True)
class Marking:
    """What a generated image's XMP says about it."""

    digital_source_type: str  # one of the two codes above
    generator: str  # the image model
    document_id: str = ""  # xmpMM:DocumentID of the original ("" for older images)
    instance_id: str = ""  # the original's xmpMM:InstanceID (also its C2PA instance_id)
    rendition: bool = False  # a rendition refers to its original rather than being it
    created: str = ""  # ISO 8601, the original's filing time

    @property
    def source_type_uri(self) -> str:
        return SOURCE_TYPE_URI + self.digital_source_type


def packet(marking: Marking) -> bytes:
    """The XMP packet (UTF-8, with its xpacket wrapper) for ``marking``."""
    attributes = {
        "Iptc4xmpExt:DigitalSourceType": marking.source_type_uri,
        "xmp:CreatorTool": SOFTWARE_AGENT,
    }
    if marking.document_id:
        attributes["xmpMM:DocumentID"] = marking.document_id
    if marking.instance_id and not marking.rendition:
        attributes["xmpMM:InstanceID"] = marking.instance_id
    if marking.created and not marking.rendition:
        attributes["xmp:CreateDate"] = marking.created
    declarations = " ".join(
        f"xmlns:{prefix}={quoteattr(uri)}"
        for prefix, uri in NAMESPACES.items()
        if prefix not in ("x", "rdf")
    )
    attrs = "".join(f"\n    {name}={quoteattr(value)}" for name, value in attributes.items())
    body = [f"   <Iptc4xmpExt:AISystemUsed>{escape(marking.generator)}</Iptc4xmpExt:AISystemUsed>"]
    if marking.rendition and marking.instance_id:
        # A rendition is the same document as its original in another size or format; the
        # original's instance id is also its C2PA manifest's, which is how a reader of the
        # rendition finds the signed original's manifest.
        body.append(
            '   <xmpMM:RenditionOf rdf:parseType="Resource">'
            f"<stRef:documentID>{escape(marking.document_id)}</stRef:documentID>"
            f"<stRef:instanceID>{escape(marking.instance_id)}</stRef:instanceID>"
            "</xmpMM:RenditionOf>"
        )
    elif marking.instance_id:
        agent = f"{SOFTWARE_AGENT} ({marking.generator})"
        action = "created" if marking.digital_source_type == TRAINED_ALGORITHMIC_MEDIA else "edited"
        body.append(
            '   <xmpMM:History><rdf:Seq><rdf:li rdf:parseType="Resource">'
            f"<stEvt:action>{action}</stEvt:action>"
            f"<stEvt:instanceID>{escape(marking.instance_id)}</stEvt:instanceID>"
            + (f"<stEvt:when>{escape(marking.created)}</stEvt:when>" if marking.created else "")
            + f"<stEvt:softwareAgent>{escape(agent)}</stEvt:softwareAgent>"
            "</rdf:li></rdf:Seq></xmpMM:History>"
        )
    text = (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        f'<x:xmpmeta xmlns:x="{NAMESPACES["x"]}">\n'
        f' <rdf:RDF xmlns:rdf="{NAMESPACES["rdf"]}">\n'
        f'  <rdf:Description rdf:about="" {declarations}{attrs}>\n'
        + "\n".join(body)
        + "\n  </rdf:Description>\n </rdf:RDF>\n</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )
    return text.encode("utf-8")
