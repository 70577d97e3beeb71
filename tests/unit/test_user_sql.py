"""The read-only checker's reading of EXPLAIN AST trees (texts as ClickHouse 26.9 prints them)."""

from __future__ import annotations

import pytest

from clickstream_lib.errors import QueryError
from clickstream_lib.user_sql import check_tree, parse_tree

SELECT_JOIN = """SelectWithUnionQuery (children 1)
 ExpressionList (children 1)
  SelectQuery (children 2)
   ExpressionList (children 2)
    Identifier a.x
    Literal \\'Function file\\' (alias Function file)
   TablesInSelectQuery (children 2)
    TablesInSelectQueryElement (children 1)
     TableExpression (children 1)
      TableIdentifier t (alias a)
    TablesInSelectQueryElement (children 2)
     TableExpression (children 1)
      Function numbers (children 1)
       ExpressionList (children 1)
        Literal UInt64_2
     TableJoin
"""


def test_a_select_with_a_generator_passes() -> None:
    check_tree(parse_tree(SELECT_JOIN), "SELECT ...")


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (SELECT_JOIN.replace("Function numbers", "Function url"), "table function url()"),
        (SELECT_JOIN.replace("Identifier a.x", "Function file (children 1)"), "function file()"),
        (
            SELECT_JOIN.replace("SelectWithUnionQuery (children 1)", "SelectWithUnionQuery (children 2)")
            + " Literal \\'/tmp/x\\'\n",
            "INTO OUTFILE",
        ),
        (SELECT_JOIN + " Identifier JSON\n", "FORMAT"),
        ("OptimizeQuery  t (children 1)\n Identifier t\n", "OPTIMIZE"),
        ("Explain EXPLAIN (children 1)\n DropQuery  t\n", "OPTIMIZE"),
    ],
)
def test_refusals(tree: str, message: str) -> None:
    with pytest.raises(QueryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_tree(parse_tree(tree), "OPTIMIZE TABLE t")


def test_an_unreadable_tree_is_refused() -> None:
    with pytest.raises(QueryError, match="cannot read"):
        parse_tree("SelectWithUnionQuery (children 1)\n\tweird line\n")
