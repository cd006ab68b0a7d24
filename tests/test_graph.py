from __future__ import annotations

import re
import shutil

import pytest

from amqptasks.config import load_config_text
from amqptasks.errors import AmqpTasksError
from amqptasks.topology.desired import DesiredTopology, desired
from amqptasks.topology.graph import render, to_dot, to_mermaid

ODD_EXCHANGE = 'we"ird #x/y <z>'
ODD_QUEUE = 'q "odd" #1'

YAML = """
topology:
  exchanges:
    - {name: orders, type: topic, alternate_exchange: orders.unroutable}
    - {name: orders.unroutable, type: fanout}
    - {name: audit, type: fanout}
    - {name: reports, type: headers}
    - {name: 'we"ird #x/y <z>', type: direct}
  queues:
    - name: orders.new
      max_priority: 5
      dead_letter: auto
      bindings:
        - {exchange: orders, routing_keys: ["order.*.created", "order.#"]}
    - name: unroutable
      bindings: [{exchange: orders.unroutable}]
    - name: audit-log
      bindings: [{exchange: audit}]
    - name: pdf-reports
      type: quorum
      delivery_limit: 3
      bindings: [{exchange: reports, match: all, headers: {format: pdf}}]
    - name: 'q "odd" #1'
      bindings: [{exchange: 'we"ird #x/y <z>', routing_key: 'k"#'}]
  bindings:
    - {exchange: orders, to_exchange: audit, routing_key: "#"}
"""


@pytest.fixture
def topology() -> DesiredTopology:
    return desired(load_config_text(YAML).topology)


def mermaid_nodes(text: str) -> list[str]:
    """Ids of the node definitions: `id{{...}}` (exchanges) and `id[(...)]` (queues)."""
    return re.findall(r"^\s+(\w+)(?:\{\{|\[\()", text, flags=re.MULTILINE)


def mermaid_edges(text: str) -> list[tuple[str, str, str, str]]:
    """(source, arrow, label, target) of every edge."""
    pattern = r'^\s+(\w+) (-->|==>|-\.->)(?:\|"([^"]*)"\|)? (\w+)$'
    return re.findall(pattern, text, flags=re.MULTILINE)


def dot_nodes(text: str) -> dict[str, str]:
    """id → label of the node statements."""
    return dict(re.findall(r'^\s+(\w+) \[shape=\w+, label="((?:[^"\\]|\\.)*)"\];$', text, flags=re.MULTILINE))


def dot_edges(text: str) -> list[tuple[str, str, str]]:
    """(source, target, attributes) of every edge."""
    return re.findall(r"^\s+(\w+) -> (\w+)(?: \[(.*)\])?;$", text, flags=re.MULTILINE)


def node_id(nodes: dict[str, str], label_start: str) -> str:
    [found] = [node for node, label in nodes.items() if label.startswith(label_start)]
    return found


def test_mermaid_shows_every_exchange_and_queue_once(topology: DesiredTopology) -> None:
    # Given a topology with five exchanges, the auto dead-letter exchange, and six queues (one a DLQ)
    # When it is drawn as Mermaid
    text = to_mermaid(topology)

    # Then each of them is one node
    nodes = mermaid_nodes(text)
    assert text.startswith("flowchart LR\n")
    assert len(nodes) == len(set(nodes)) == 12
    for name in ("orders", "orders.unroutable", "audit", "reports", "amqptasks.dlx"):
        assert text.count(f'{{{{"{name}<br/>') == 1
    for name in ("orders.new", "orders.new.dlq", "unroutable", "audit-log", "pdf-reports"):
        assert text.count(f'[("{name}<br/>') == 1


def test_mermaid_labels_bindings_with_routing_keys_and_header_matches(topology: DesiredTopology) -> None:
    # Given the topology
    # When it is drawn as Mermaid
    edges = mermaid_edges(to_mermaid(topology))

    # Then bindings are solid arrows labelled with their keys, '#' written as Mermaid's #35; entity
    assert ("ex_orders", "-->", "order.*.created", "q_orders_new") in edges
    assert ("ex_orders", "-->", "order.#35;", "q_orders_new") in edges
    assert ("ex_audit", "-->", "", "q_audit_log") in edges
    assert ("ex_reports", "-->", "x-match=all<br/>format=pdf", "q_pdf_reports") in edges
    # And the exchange-to-exchange binding and the alternate exchange are edges between exchanges
    assert ("ex_orders", "-->", "#35;", "ex_audit") in edges
    assert ("ex_orders", "==>", "alternate", "ex_orders_unroutable") in edges


def test_mermaid_draws_dead_lettering_as_a_dashed_edge(topology: DesiredTopology) -> None:
    # Given a queue with dead_letter: auto
    # When the topology is drawn as Mermaid
    edges = mermaid_edges(to_mermaid(topology))

    # Then the queue has a dashed edge to the dead-letter exchange, which routes to its DLQ
    assert ("q_orders_new", "-.->", "dead-letter<br/>key orders.new", "ex_amqptasks_dlx") in edges
    assert ("ex_amqptasks_dlx", "-->", "orders.new", "q_orders_new_dlq") in edges
    # And it is the only dashed edge
    assert [e for e in edges if e[1] == "-.->"] == [
        ("q_orders_new", "-.->", "dead-letter<br/>key orders.new", "ex_amqptasks_dlx")
    ]


def test_mermaid_escapes_quotes_hashes_and_angle_brackets_in_names(topology: DesiredTopology) -> None:
    # Given names with quotes, '#', '/', '<' and spaces
    # When the topology is drawn as Mermaid
    text = to_mermaid(topology)

    # Then the raw names never appear; the labels use Mermaid entities and the ids are plain words
    assert ODD_EXCHANGE not in text
    assert ODD_QUEUE not in text
    assert 'ex_we_ird_x_y_z{{"we#34;ird #35;x/y #60;z#62;<br/>direct"}}' in text
    assert 'q_q_odd_1[("q #34;odd#34; #35;1<br/>classic")]' in text
    assert ("ex_we_ird_x_y_z", "-->", "k#34;#35;", "q_q_odd_1") in mermaid_edges(text)


def test_dot_shows_every_exchange_and_queue_once_with_distinct_shapes(topology: DesiredTopology) -> None:
    # Given the topology
    # When it is drawn as DOT
    text = to_dot(topology)

    # Then there is one node per exchange (hexagon) and per queue (cylinder), labelled with name and type
    assert text.startswith("digraph topology {\n") and text.endswith("}\n")
    nodes = dot_nodes(text)
    assert len(nodes) == 12
    assert text.count("shape=hexagon") == 6
    assert text.count("shape=cylinder") == 6
    assert nodes["ex_orders"] == "orders\\ntopic"
    assert nodes["q_orders_new"] == "orders.new\\nclassic, priority 0-5"
    assert nodes["q_pdf_reports"] == "pdf-reports\\nquorum, delivery limit 3"


def test_dot_labels_bindings_and_dashes_dead_letter_edges(topology: DesiredTopology) -> None:
    # Given the topology
    # When it is drawn as DOT
    edges = dot_edges(to_dot(topology))

    # Then bindings carry their keys, the alternate exchange edge is bold, the dead-letter edge dashed
    assert ("ex_orders", "q_orders_new", 'label="order.#"') in edges
    assert ("ex_orders", "ex_audit", 'label="#"') in edges
    assert ("ex_audit", "q_audit_log", "") in edges
    assert ("ex_reports", "q_pdf_reports", 'label="x-match=all\\nformat=pdf"') in edges
    assert ("ex_orders", "ex_orders_unroutable", 'label="alternate", style=bold') in edges
    dashed = [e for e in edges if "style=dashed" in e[2]]
    assert dashed == [("q_orders_new", "ex_amqptasks_dlx", 'label="dead-letter\\nkey orders.new", style=dashed')]


def test_dot_escapes_quotes_in_names(topology: DesiredTopology) -> None:
    # Given names with quotes, '#', '/', '<' and spaces
    # When the topology is drawn as DOT
    text = to_dot(topology)

    # Then the names are inside quoted, escaped labels and the ids are plain words
    nodes = dot_nodes(text)
    assert nodes["ex_we_ird_x_y_z"] == 'we\\"ird #x/y <z>\\ndirect'
    assert nodes["q_q_odd_1"] == 'q \\"odd\\" #1\\nclassic'
    assert ("ex_we_ird_x_y_z", "q_q_odd_1", 'label="k\\"#"') in dot_edges(text)


def test_names_that_differ_only_in_punctuation_get_different_ids() -> None:
    # Given queues whose names flatten to the same word, and an exchange with the same name as a queue
    config = load_config_text(
        """
topology:
  exchanges: [{name: a.b, type: fanout}]
  queues:
    - {name: a.b, bindings: [{exchange: a.b}]}
    - {name: a/b, bindings: [{exchange: a.b}]}
    - {name: 'a b', bindings: [{exchange: a.b}]}
"""
    )

    # When the topology is drawn
    text = to_dot(desired(config.topology))

    # Then each gets its own node
    nodes = dot_nodes(text)
    assert len(nodes) == 4
    assert {label.split("\\n")[0] for label in nodes.values()} == {"a.b", "a/b", "a b"}
    assert len(dot_edges(text)) == 3


def test_output_does_not_depend_on_the_order_of_the_yaml(topology: DesiredTopology) -> None:
    # Given the same topology with its sections reversed
    reordered = DesiredTopology(topology.exchanges[::-1], topology.queues[::-1], topology.bindings[::-1])

    # When both are drawn
    # Then the text is identical
    assert to_mermaid(reordered) == to_mermaid(topology)
    assert to_dot(reordered) == to_dot(topology)


def test_built_in_and_undeclared_exchanges_are_drawn_too() -> None:
    # Given a queue bound to amq.topic that dead-letters to an exchange declared elsewhere
    config = load_config_text(
        """
topology:
  exchanges: [{name: elsewhere, type: fanout}]
  queues:
    - name: jobs
      dead_letter: {exchange: elsewhere}
      bindings: [{exchange: amq.topic, routing_key: jobs.#}]
"""
    )

    # When it is drawn
    nodes = dot_nodes(to_dot(desired(config.topology)))

    # Then the built-in exchange is a node marked as such
    assert nodes["ex_amq_topic"] == "amq.topic\\ntopic (built-in)"


def test_render_returns_mermaid_and_dot_text(topology: DesiredTopology) -> None:
    assert render(topology, "mermaid") == to_mermaid(topology)
    assert render(topology, "dot") == to_dot(topology)


def test_render_svg_without_graphviz_explains_what_to_install(
    topology: DesiredTopology, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a machine without graphviz
    monkeypatch.setattr(shutil, "which", lambda name: None)

    # When SVG is asked for
    # Then the error says what is missing and what to do
    with pytest.raises(AmqpTasksError) as caught:
        render(topology, "svg")
    assert str(caught.value) == (
        "graphviz's 'dot' is not installed; install graphviz (apt install graphviz) or use --format mermaid/dot"
    )


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz's 'dot' is not installed")
def test_render_svg_with_graphviz_gives_an_svg_document(topology: DesiredTopology) -> None:
    svg = render(topology, "svg")

    assert svg.lstrip().startswith(("<?xml", "<svg"))
    assert "orders.new" in svg
