"""Summary statistics over clean sales records."""


def summarize(records: list[dict]) -> dict:
    """Compute summary statistics over clean sales records.

    ``records`` are dicts with at least ``"city"`` (str) and ``"amount"`` (float),
    as returned by ``load_records``; the list is not modified. Returns a new dict
    with exactly these keys, in this order:

    - ``"count"``: the number of records (int);
    - ``"total"``: the sum of all amounts;
    - ``"mean"``: the arithmetic mean of the amounts, or None if there are no records;
    - ``"median"``: the median of the amounts (the mean of the two middle values
      when the count is even), or None if there are no records;
    - ``"by_city"``: a dict mapping each city to the sum of its amounts, with the
      cities in alphabetical order.

    Every float in the result is rounded with ``round(x, 2)``, after computing it
    from the unrounded amounts. An empty list gives
    ``{"count": 0, "total": 0.0, "mean": None, "median": None, "by_city": {}}``.

    >>> summarize([
    ...     {"name": "Ann", "city": "Paris", "amount": 1000.5},
    ...     {"name": "Bob", "city": "Lyon", "amount": 250.0},
    ...     {"name": "Cy", "city": "Paris", "amount": 10.0},
    ... ])
    {'count': 3, 'total': 1260.5, 'mean': 420.17, 'median': 250.0, 'by_city': {'Lyon': 250.0, 'Paris': 1010.5}}
    >>> summarize([])
    {'count': 0, 'total': 0.0, 'mean': None, 'median': None, 'by_city': {}}
    """
    ...


def top_cities(summary: dict, n: int = 3) -> list[tuple[str, float]]:
    """Return the ``n`` cities of ``summary`` with the largest totals, largest first.

    Ties are broken by city name, A to Z.
    """
    ranked = sorted(summary["by_city"].items(), key=lambda item: (-item[1], item[0]))
    return ranked[:n]
