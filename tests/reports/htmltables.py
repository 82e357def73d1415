"""Tiny stdlib HTML reader for the report tests: tables by class, headings, images."""

from html.parser import HTMLParser


class ReportParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: list[dict] = []  # {"class", "id_before", "rows": [[(text, attrs), ...]]}
        self.headings: list[str] = []
        self.images: list[dict] = []
        self._table = None
        self._row = None
        self._cell = None
        self._heading = None
        self._last_heading = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = {"class": a.get("class", ""), "after": self._last_heading, "rows": [], "row_attrs": []}
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table["row_attrs"].append(a)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ["", a]
        elif tag in ("h1", "h2", "h3"):
            self._heading = ""
        elif tag == "img":
            self.images.append(a)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append((self._cell[0].strip(), self._cell[1]))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self._table["rows"].append(self._row)
            self._row = None
        elif tag == "table" and self._table is not None:
            self.tables.append(self._table)
            self._table = None
        elif tag in ("h1", "h2", "h3") and self._heading is not None:
            self.headings.append(self._heading.strip())
            self._last_heading = self._heading.strip()
            self._heading = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data
        if self._heading is not None:
            self._heading += data

    def table(self, cls: str, after: str | None = None) -> dict:
        found = [t for t in self.tables if t["class"] == cls and (after is None or t["after"] == after)]
        assert len(found) == 1, f"expected one table {cls!r} after {after!r}, found {len(found)}"
        return found[0]


def parse(html: str) -> ReportParser:
    p = ReportParser()
    p.feed(html)
    p.close()
    return p
