"""SQL a user types (``clickstream query --sql``, notebooks): one read-only statement, checked by the engine.

A statement runs only after three checks, all made by ClickHouse itself rather than by searching the text:

1. **One statement.** The engine's own parser formats it (``formatQuery``, the text bound as a query parameter);
   it refuses ``;``-separated input wherever the ``;`` hides (comments and string literals are parsed as such).
   The formatted text is what runs, so what was checked is what executes.
2. **A read statement that stays inside the database.** The statement's syntax tree (``EXPLAIN AST``, which only
   parses) must be a SELECT, SHOW, DESCRIBE, EXISTS or an EXPLAIN of one of those; it may not write a file
   (``INTO OUTFILE``), pick its own output ``FORMAT``, read the host (the ``file`` function) or use a table
   function other than the generators in :data:`TABLE_FUNCTIONS` (``file``, ``url``, ``s3``, ``executable``,
   ``remote``, ... reach outside the store).
3. **Read-only enforced by the engine.** The statement runs on a client of its own whose session has
   ``readonly = 1`` (embedded) or ``readonly = 2`` (server: clickhouse-connect sends its own HTTP settings, which
   ``readonly = 1`` refuses; 2 still refuses every write, DDL and a change of ``readonly``). That client never runs
   anything else, so a refused statement cannot leave the store's shared client in another state.

A refused statement raises :class:`~clickstream_lib.errors.QueryError` (``clickstream`` exits 2) saying what is not
allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from .errors import QueryError

# Statement kinds (the root node of EXPLAIN AST) that only read.
READ_STATEMENTS: tuple[str, ...] = (
    "SelectWithUnionQuery",
    "SelectIntersectExceptQuery",
    "ShowTables",  # SHOW TABLES / DATABASES / SETTINGS ...
    "ShowColumns",
    "ShowCreate",  # ShowCreateTableQuery, ShowCreateDatabaseQuery, ...
    "DescribeQuery",
    "ExistsTableQuery",
    "ExistsDatabaseQuery",
    "ExistsViewQuery",
    "ExistsDictionaryQuery",
)
# Table functions that generate rows and touch nothing outside the engine.
TABLE_FUNCTIONS: frozenset[str] = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "generate_series", "generateSeries", "generateRandom", "values"}
)
# Scalar functions that read the host.
HOST_FUNCTIONS: frozenset[str] = frozenset({"file"})

_NODE = re.compile(r"^( *)([A-Z][A-Za-z]*)(?: (\S+))?")


@dataclass(frozen=True)
class _Node:
    depth: int
    kind: str
    name: str


def _refuse(what: str) -> QueryError:
    return QueryError("sql", f"{what} is not allowed: only one read-only statement (SELECT, SHOW, DESCRIBE, EXISTS)")


def _engine_message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"(Code: \d+\. )?DB::Exception: ", "", text.replace("\\'", "'"))
    text = re.sub(r"\s*\(version [^)]*\)", "", text)
    return re.sub(r"(\.? \([A-Z_]+\))+\.?$", "", text).strip()[:300]


def parse_tree(explain_ast: str) -> list[_Node]:
    """The nodes of an ``EXPLAIN AST`` text, in order, with their depth; a line it cannot read is refused."""
    nodes = []
    for line in explain_ast.splitlines():
        if not line.strip():
            continue
        m = _NODE.match(line)
        if not m:
            raise _refuse("a statement the checker cannot read")
        nodes.append(_Node(len(m.group(1)), m.group(2), m.group(3) or ""))
    if not nodes:
        raise _refuse("an empty statement")
    return nodes


def check_tree(nodes: list[_Node], statement: str = "") -> None:
    """Raise QueryError unless the tree is one read statement that touches nothing outside the store.

    ``statement`` is the formatted text, whose first keyword names a refused statement in the message.
    """
    root = nodes[0]
    kinds = [root]
    if root.kind == "Explain" and len(nodes) > 1:
        kinds.append(nodes[1])  # the explained statement must be a read too
    for node in kinds:
        if not node.kind.startswith(READ_STATEMENTS) and node.kind != "Explain":
            raise _refuse(_statement_name(statement) if statement else f"a {node.kind} statement")
    parents: list[_Node] = []
    for node in nodes:
        del parents[node.depth :]
        parent = parents[-1] if parents else None
        if node.kind == "Function":
            if parent is not None and parent.kind == "TableExpression" and node.name not in TABLE_FUNCTIONS:
                raise _refuse(f"the table function {node.name}() (it reaches outside the store)")
            if node.name in HOST_FUNCTIONS:
                raise _refuse(f"the function {node.name}() (it reads files of this machine)")
        if parent is not None and parent.kind == "SelectWithUnionQuery":
            if node.kind == "Literal":
                raise _refuse("INTO OUTFILE (writing a file)")
            if node.kind == "Identifier":
                raise _refuse("a FORMAT clause (choose the output with --format)")
        parents.append(node)


def _statement_name(statement: str) -> str:
    """The statement's first keyword as the user wrote it (``OPTIMIZE``, ``SYSTEM``), for the error message."""
    words = statement.split(None, 1)
    return words[0].upper() if words else "an empty statement"


def checked(client: Client, sql: str, parameters: dict[str, Any] | None = None) -> str:
    """The statement as the engine formats it, once it passed the checks; raises QueryError otherwise.

    Args:
        client: the read-only client (its session cannot write, whatever the text says).
        sql: the user's text; ``{name:Type}`` placeholders stay placeholders in the formatted text.
        parameters: the values bound to those placeholders (the parser needs them to build the tree).
    """
    if not sql.strip():
        raise QueryError("sql", "is empty; pass a SELECT statement")
    try:
        formatted = str(client.query("SELECT formatQuery({sql:String})", parameters={"sql": sql}).result_rows[0][0])
    except ClickHouseError as exc:
        message = _engine_message(exc)
        if "Multi-statements are not allowed" in message:
            raise _refuse("more than one statement") from None
        raise QueryError("sql", f"ClickHouse cannot parse it: {message}") from None
    try:
        tree = str(
            client.command(f"EXPLAIN AST {formatted}", parameters=parameters or None)
        )  # the formatted text of one statement; only parsed
    except ClickHouseError as exc:
        raise refused_by_engine(exc) or QueryError(
            "sql", f"ClickHouse cannot parse it: {_engine_message(exc)}"
        ) from None
    check_tree(parse_tree(tree), formatted)
    return formatted


def refused_by_engine(exc: BaseException) -> QueryError | None:
    """A QueryError for an engine refusal of a read-only session (code 164, READONLY), else None."""
    if getattr(exc, "code", None) == 164 or "(READONLY)" in str(exc):
        return QueryError("sql", f"refused by ClickHouse's read-only mode: {_engine_message(exc)}")
    return None
