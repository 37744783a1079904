"""Tests for the pipeline: loading, summarizing, reporting."""

from pipeline.records import load_records
from pipeline.report import render_report
from pipeline.stats import summarize

SALES_CSV = """name,city,amount
Ann, paris ,1000.50
Bob,LYON,250

Cy,Paris,10
Dee,lyon,n/a
Eve,nice,
"""


# load_records ----------------------------------------------------------------


def test_load_records_cleans_fields():
    records = load_records("name,city,amount\n  Ann Lee ,  new york , 12.5 \nbob,PARIS,3\n")
    assert records == [
        {"name": "Ann Lee", "city": "New York", "amount": 12.5},
        {"name": "bob", "city": "Paris", "amount": 3.0},
    ]
    assert all(isinstance(record["amount"], float) for record in records)
    assert list(records[0]) == ["name", "city", "amount"]


def test_load_records_skips_blank_and_invalid_rows():
    text = (
        "\n"
        "name,city,amount\n"
        "\n"
        "   \n"
        "ann,paris,1\n"
        "bob,lyon,\n"
        "cy,rome\n"
        "dee,oslo,n/a\n"
        "eve,bern,12 EUR\n"
        "fay,kyiv,nan\n"
        "gus,riga,inf\n"
        "hal,lima,-2.5\n"
    )
    assert load_records(text) == [
        {"name": "ann", "city": "Paris", "amount": 1.0},
        {"name": "hal", "city": "Lima", "amount": -2.5},
    ]


def test_load_records_quoted_fields_extra_fields_and_crlf():
    text = 'name,city,amount\r\n"Smith, J",rome,"1,5"\r\n"Doe, A", san jose ,7,extra\r\n'
    assert load_records(text) == [{"name": "Doe, A", "city": "San Jose", "amount": 7.0}]


def test_load_records_empty_or_header_only():
    assert load_records("") == []
    assert load_records("\n\n") == []
    assert load_records("name,city,amount\n") == []


# summarize -------------------------------------------------------------------


def test_summarize_basic():
    records = [
        {"name": "Ann", "city": "Paris", "amount": 1000.5},
        {"name": "Bob", "city": "Lyon", "amount": 250.0},
        {"name": "Cy", "city": "Paris", "amount": 10.0},
    ]
    assert summarize(records) == {
        "count": 3,
        "total": 1260.5,
        "mean": 420.17,
        "median": 250.0,
        "by_city": {"Lyon": 250.0, "Paris": 1010.5},
    }


def test_summarize_even_count_median_and_city_order():
    records = [
        {"name": "a", "city": "Rome", "amount": 4.0},
        {"name": "b", "city": "Berlin", "amount": 1.0},
        {"name": "c", "city": "Rome", "amount": 3.0},
        {"name": "d", "city": "Athens", "amount": 2.0},
    ]
    summary = summarize(records)
    assert summary["median"] == 2.5
    assert summary["mean"] == 2.5
    assert list(summary["by_city"]) == ["Athens", "Berlin", "Rome"]
    assert summary["by_city"]["Rome"] == 7.0
    assert list(summary) == ["count", "total", "mean", "median", "by_city"]


def test_summarize_rounds_to_two_decimals():
    records = [
        {"name": "a", "city": "Oslo", "amount": 0.1},
        {"name": "b", "city": "Oslo", "amount": 0.2},
        {"name": "c", "city": "Bern", "amount": 1.0},
    ]
    summary = summarize(records)
    assert summary["total"] == 1.3
    assert summary["mean"] == 0.43
    assert summary["median"] == 0.2
    assert summary["by_city"] == {"Bern": 1.0, "Oslo": 0.3}


def test_summarize_empty():
    summary = summarize([])
    assert summary == {"count": 0, "total": 0.0, "mean": None, "median": None, "by_city": {}}
    assert isinstance(summary["total"], float)


def test_summarize_does_not_modify_input():
    records = [
        {"name": "a", "city": "Oslo", "amount": 3.0},
        {"name": "b", "city": "Bern", "amount": 1.0},
    ]
    before = [dict(record) for record in records]
    assert summarize(records)["by_city"] == {"Bern": 1.0, "Oslo": 3.0}
    assert records == before


# render_report ---------------------------------------------------------------


def test_render_report_full():
    summary = {
        "count": 3,
        "total": 1260.5,
        "mean": 420.17,
        "median": 250.0,
        "by_city": {"Lyon": 250.0, "Paris": 1010.5},
    }
    assert render_report(summary) == (
        "Sales report\n"
        "============\n"
        "Records: 3\n"
        "Total: 1,260.50\n"
        "Mean: 420.17\n"
        "Median: 250.00\n"
        "By city:\n"
        "  Paris: 1,010.50\n"
        "  Lyon: 250.00\n"
    )


def test_render_report_empty():
    summary = {"count": 0, "total": 0.0, "mean": None, "median": None, "by_city": {}}
    assert render_report(summary) == (
        "Sales report\n"
        "============\n"
        "Records: 0\n"
        "Total: 0.00\n"
        "Mean: n/a\n"
        "Median: n/a\n"
        "By city:\n"
        "  (none)\n"
    )


def test_render_report_orders_cities_and_formats_numbers():
    summary = {
        "count": 4,
        "total": 1234572.89,
        "mean": 308643.22,
        "median": 2.5,
        "by_city": {"Nice": 5.0, "Brest": -3.0, "Paris": 1234567.891, "Lyon": 5.0},
    }
    lines = render_report(summary).splitlines()
    assert lines[3] == "Total: 1,234,572.89"
    assert lines[4] == "Mean: 308,643.22"
    assert lines[5] == "Median: 2.50"
    assert lines[7:] == [
        "  Paris: 1,234,567.89",
        "  Lyon: 5.00",
        "  Nice: 5.00",
        "  Brest: -3.00",
    ]


# all three together ----------------------------------------------------------


def test_pipeline_end_to_end():
    summary = summarize(load_records(SALES_CSV))
    assert summary == {
        "count": 3,
        "total": 1260.5,
        "mean": 420.17,
        "median": 250.0,
        "by_city": {"Lyon": 250.0, "Paris": 1010.5},
    }
    report = render_report(summary)
    assert report.endswith("By city:\n  Paris: 1,010.50\n  Lyon: 250.00\n")
