"""Loading clean sales records from CSV text."""

import os
from pathlib import Path


def load_records(text: str) -> list[dict]:
    r"""Parse CSV ``text`` into clean sales records.

    ``text`` is CSV in the ``csv`` module's default dialect (so a quoted field may
    contain a comma; ``\n`` and ``\r\n`` line endings both work). The first
    non-blank row is the header ``name,city,amount`` and is not returned. Every
    later row becomes a dict ``{"name": str, "city": str, "amount": float}``
    (keys in that order), where:

    - every field has its surrounding whitespace stripped;
    - ``city`` is title-cased with ``str.title()`` (``"new york"`` -> ``"New York"``);
    - ``amount`` is ``float()`` of the field.

    These rows are skipped silently (never an error):

    - blank rows: no field has a non-whitespace character (e.g. an empty line);
    - rows with fewer than three fields, or an empty amount;
    - rows whose amount ``float()`` cannot parse (``"n/a"``, ``"12 EUR"``), or
      whose amount is not finite (``"nan"``, ``"inf"``).

    Fields after the third are ignored. Records keep their input order. Empty
    text, or text with only a header, gives ``[]``.

    >>> load_records("name,city,amount\n ann , paris , 12.5\n\nbob,lyon,n/a\ncy,new york,3\n")
    [{'name': 'ann', 'city': 'Paris', 'amount': 12.5}, {'name': 'cy', 'city': 'New York', 'amount': 3.0}]
    >>> load_records('name,city,amount\n"Smith, J",rome,-4.25\n')
    [{'name': 'Smith, J', 'city': 'Rome', 'amount': -4.25}]
    >>> load_records("")
    []
    """
    ...


def read_records(path: str | os.PathLike) -> list[dict]:
    """Read the CSV file at ``path`` (UTF-8) and return its clean records.

    See ``load_records`` for the format and the cleaning rules.
    """
    return load_records(Path(path).read_text(encoding="utf-8"))


def records_for_city(records: list[dict], city: str) -> list[dict]:
    """Return the records of ``city``, matched after stripping and title-casing it."""
    wanted = city.strip().title()
    return [record for record in records if record["city"] == wanted]
