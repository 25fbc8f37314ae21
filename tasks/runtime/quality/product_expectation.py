"""A custom expectation: one column equals the product of others, row by row.

GX has no built-in row-wise product check (Sales = Quantity * UnitPrice,
TotalSales = AvgOrderValue * OrderCount). Defining a MulticolumnMapExpectation plus its map
metric registers both by name, so suites use ``expect_multicolumn_product_to_equal_column`` like
any core expectation, and it reports unexpected counts, samples and Data Docs like one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_REGISTERED = False


def register() -> None:
    """Register the expectation and its metric with GX (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return

    from great_expectations.compatibility import pydantic
    from great_expectations.execution_engine import PandasExecutionEngine
    from great_expectations.expectations.expectation import MulticolumnMapExpectation
    from great_expectations.expectations.metrics.map_metric_provider import (
        MulticolumnMapMetricProvider,
    )
    from great_expectations.expectations.metrics.map_metric_provider.multicolumn_condition_partial import (
        multicolumn_condition_partial,
    )
    from great_expectations.render import RenderedStringTemplateContent
    from great_expectations.render.components import LegacyRendererType
    from great_expectations.render.renderer.renderer import renderer

    class MulticolumnValuesProductMatches(MulticolumnMapMetricProvider):
        condition_metric_name = "multicolumn_values.product_matches"
        condition_domain_keys = (
            "batch_id",
            "table",
            "column_list",
            "row_condition",
            "condition_parser",
            "ignore_row_if",
        )
        condition_value_keys = ("product_column", "rtol", "atol")

        @multicolumn_condition_partial(engine=PandasExecutionEngine)
        def _pandas(cls, column_list, product_column, rtol, atol, **kwargs):
            factors = [c for c in column_list.columns if c != product_column]
            values = column_list[factors].to_numpy(dtype="float64", na_value=np.nan)
            expected = np.prod(values, axis=1)
            actual = column_list[product_column].to_numpy(dtype="float64", na_value=np.nan)
            matches = np.isclose(actual, expected, rtol=float(rtol), atol=float(atol), equal_nan=False)
            return pd.Series(matches, index=column_list.index)

    class ExpectMulticolumnProductToEqualColumn(MulticolumnMapExpectation):
        """Expect product_column to equal the product of the other columns of column_list.

        Row-wise |product_column - product| <= atol + rtol * |product| (numpy.isclose).
        """

        product_column: str = pydantic.Field(description="The column holding the product")
        rtol: float = pydantic.Field(default=1e-9, description="Relative tolerance")
        atol: float = pydantic.Field(default=0.0, description="Absolute tolerance")

        map_metric = "multicolumn_values.product_matches"
        success_keys = ("mostly", "product_column", "rtol", "atol")
        args_keys = ("column_list", "product_column")
        library_metadata = {"maturity": "experimental", "tags": ["pipeline"], "contributors": []}

        @pydantic.root_validator(skip_on_failure=True)
        def _product_column_in_list(cls, values):
            columns = values.get("column_list") or []
            if values.get("product_column") not in columns:
                raise ValueError("product_column must be one of column_list")
            return values

        @classmethod
        @renderer(renderer_type=LegacyRendererType.PRESCRIPTIVE)
        def _prescriptive_renderer(cls, configuration=None, result=None, runtime_configuration=None, **kwargs):
            runtime_configuration = runtime_configuration or {}
            kw = configuration.kwargs if configuration else {}
            product = kw.get("product_column")
            factors = [c for c in kw.get("column_list", []) if c != product]
            return [
                RenderedStringTemplateContent(
                    content_block_type="string_template",
                    string_template={
                        "template": "$product_column must equal $factors (relative tolerance $rtol, absolute $atol).",
                        "params": {
                            "product_column": product,
                            "factors": " × ".join(map(str, factors)),
                            "rtol": kw.get("rtol", 1e-9),
                            "atol": kw.get("atol", 0.0),
                        },
                        "styling": runtime_configuration.get("styling"),
                    },
                )
            ]

    _REGISTERED = True
