"""The client's TypedDict view of the report matches the server's Pydantic model, key for key."""

from typing import get_type_hints

import pytest

from core.pipeline import report_model
from hydra_client import report_view


@pytest.mark.parametrize(
    ("view", "model"),
    [
        (report_view.ReportView, report_model.Report),
        (report_view.ComparisonRow, report_model.ComparisonRow),
        (report_view.Flag, report_model.Flag),
    ],
)
def test_every_key_of_the_view_is_a_field_of_the_model(view, model) -> None:
    fields = model.model_fields
    for key, hint in get_type_hints(view).items():
        assert key in fields, f"{view.__name__}.{key} is not a field of {model.__name__}"
        optional_in_view = "None" in str(hint)
        optional_in_model = "None" in str(fields[key].annotation)
        assert optional_in_view == optional_in_model, f"{view.__name__}.{key}: optional in one, not the other"


def test_the_view_reads_a_report_the_server_wrote() -> None:
    import json
    from pathlib import Path

    from core.pipeline.report_build import load_report
    from hydra_client.display import comparison_table

    stored = json.loads((Path(__file__).parents[1] / "data/reports/v2_two_seeds.json").read_text())
    served = load_report(stored).model_dump(mode="json")  # what GET /v1/jobs/{id}/report sends
    table = comparison_table(served)
    assert "hydra_k0.1_s2" in table and "[95% CI]" in table
    assert "chance_accuracy" in table  # 9.4% benign on 10 classes is flagged
