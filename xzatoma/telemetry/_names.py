"""Every metric, span and attribute name xzatoma's telemetry uses, spelled once.

The subagent instruments are the contract docs/telemetry.md documents; the ``gen_ai.*`` names follow
the OpenTelemetry GenAI semantic conventions. The Prometheus exporter turns ``.`` into ``_``,
appends ``_total`` to counters and the unit (``_seconds``) when the unit is a real one; units in
braces such as ``{execution}`` are annotations and add nothing. The Prometheus names the
instruments come out under are listed here too, for tests and docs.
"""

from __future__ import annotations

from typing import Final

SCOPE: Final = "xzatoma"
"""Meter and tracer scope name (the version is the package's)."""
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.44.0"
"""The semantic conventions the names below follow; the meter and tracer scopes carry it."""

# -- subagent instruments (docs/telemetry.md) -------------------------------------------------
EXECUTIONS: Final = "subagent.executions"
DURATION: Final = "subagent.duration"
TURNS_USED: Final = "subagent.turns_used"
TOKENS_CONSUMED: Final = "subagent.tokens_consumed"
COMPLETIONS: Final = "subagent.completions"
ERRORS: Final = "subagent.errors"
ACTIVE_COUNT: Final = "subagent.active_count"
BATCHES: Final = "subagent.batches"
BATCH_SIZE: Final = "subagent.batch.size"
COST: Final = "subagent.cost"
"""US dollars of model calls, by the depth of the agent that made them (subagents, and the
root at depth 0); calls whose price is not known add nothing."""

# -- provider instruments ---------------------------------------------------------------------
TEXT_TOOL_CALLS: Final = "xzatoma.text_tool_calls"
"""Tool calls a model wrote as text and the provider read as real ones."""

# -- GenAI client instruments ----------------------------------------------------------------
TOKEN_USAGE: Final = "gen_ai.client.token.usage"
OPERATION_DURATION: Final = "gen_ai.client.operation.duration"

# -- GenAI agent instruments (every run, the root included; spans' exemplars) -----------------
INVOKE_AGENT_DURATION: Final = "gen_ai.invoke_agent.duration"
EXECUTE_TOOL_DURATION: Final = "gen_ai.execute_tool.duration"
INVOKE_AGENT_MODEL_CALLS: Final = "gen_ai.invoke_agent.model_calls"
"""Model calls per run (of runs that made any)."""
INVOKE_AGENT_TOOL_CALLS: Final = "gen_ai.invoke_agent.tool_calls"
"""Tool calls per run (of runs whose model asked for any)."""

PROMETHEUS_NAMES: Final = {
    EXECUTIONS: "subagent_executions_total",
    DURATION: "subagent_duration_seconds",
    TURNS_USED: "subagent_turns_used",
    TOKENS_CONSUMED: "subagent_tokens_consumed",
    COMPLETIONS: "subagent_completions_total",
    ERRORS: "subagent_errors_total",
    ACTIVE_COUNT: "subagent_active_count",
    BATCHES: "subagent_batches_total",
    BATCH_SIZE: "subagent_batch_size",
    COST: "subagent_cost_usd_total",
    TEXT_TOOL_CALLS: "xzatoma_text_tool_calls_total",
    TOKEN_USAGE: "gen_ai_client_token_usage",
    OPERATION_DURATION: "gen_ai_client_operation_duration_seconds",
    INVOKE_AGENT_DURATION: "gen_ai_invoke_agent_duration_seconds",
    EXECUTE_TOOL_DURATION: "gen_ai_execute_tool_duration_seconds",
    INVOKE_AGENT_MODEL_CALLS: "gen_ai_invoke_agent_model_calls",
    INVOKE_AGENT_TOOL_CALLS: "gen_ai_invoke_agent_tool_calls",
}
"""Instrument name -> the metric family name in the Prometheus text exposition."""

# -- units -----------------------------------------------------------------------------------
UNIT_SECONDS: Final = "s"
UNIT_EXECUTION: Final = "{execution}"
UNIT_TURN: Final = "{turn}"
UNIT_TOKEN: Final = "{token}"
UNIT_ERROR: Final = "{error}"
UNIT_BATCH: Final = "{batch}"
UNIT_TASK: Final = "{task}"
UNIT_CALL: Final = "{call}"
UNIT_USD: Final = "usd"
"""US dollars; lower case, so the Prometheus name ends ``_usd_total`` (UCUM has no currency)."""

# -- metric attributes (bounded values only: never a label, prompt or id) --------------------
DEPTH: Final = "depth"
STATUS: Final = "status"
ERROR_TYPE: Final = "error_type"

# -- GenAI attributes ------------------------------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
"""On ``chat`` spans only: the endpoint chooses it, so on a metric it would be unbounded."""
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
GEN_AI_AGENT_NAME: Final = "gen_ai.agent.name"
GEN_AI_TOOL_NAME: Final = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID: Final = "gen_ai.tool.call.id"
GEN_AI_RESPONSE_ID: Final = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
OTEL_ERROR_TYPE: Final = "error.type"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"

TOKEN_TYPE_INPUT: Final = "input"
TOKEN_TYPE_OUTPUT: Final = "output"

OP_CHAT: Final = "chat"
OP_INVOKE_AGENT: Final = "invoke_agent"
OP_EXECUTE_TOOL: Final = "execute_tool"

# -- xzatoma span attributes -----------------------------------------------------------------
XZ_DEPTH: Final = "xzatoma.depth"
XZ_LABEL: Final = "xzatoma.label"
XZ_SESSION_ID: Final = "xzatoma.session.id"
"""The runtime's session id: on every span of its tree, as OTel baggage while its runs work
(so spans of libraries a tool calls can carry it), and on metrics only when a subscriber
is told to (``metrics_include_session_id``)."""
XZ_MCP_SERVER: Final = "xzatoma.mcp.server"
"""On an ``execute_tool`` span of an MCP tool: the server's name (the semantic conventions'
``mcp.*`` attributes have none for it)."""
XZ_STATUS: Final = "xzatoma.status"
XZ_TURNS: Final = "xzatoma.turns"
XZ_TOTAL_TOKENS: Final = "xzatoma.usage.total_tokens"
XZ_COST: Final = "xzatoma.cost_usd"
"""On ``chat`` and ``invoke_agent`` spans: US dollars of the call, or of the run's own calls
(set only when the price is known)."""
XZ_TOTAL_COST: Final = "xzatoma.total_cost_usd"
"""On an ``invoke_agent`` span: the run's own cost plus every descendant's (when known)."""
XZ_TOOL_CALLS_FROM_TEXT: Final = "xzatoma.tool_calls_from_text"
"""On a ``chat`` span: how many tool calls the model wrote as text (set only when some)."""

TOOL_ERROR: Final = "tool_error"
"""``error.type`` of an ``execute_tool`` span whose tool answered ``Error: ...``."""
CANCELLED: Final = "cancelled"
UNKNOWN_TOOL: Final = "(unknown)"
"""``gen_ai.tool.name`` on ``gen_ai.execute_tool.duration`` for a call naming no offered tool:
the model chose that name, so on a metric it would be unbounded (the span keeps it)."""


def invoke_agent_span(name: str) -> str:
    """``invoke_agent {name}``: the span of one agent run."""
    return f"{OP_INVOKE_AGENT} {name}"


def execute_tool_span(tool: str) -> str:
    """``execute_tool {tool}``: the span of one tool call."""
    return f"{OP_EXECUTE_TOOL} {tool}"


def chat_span(model: str) -> str:
    """``chat {model}``: the span of one model call."""
    return f"{OP_CHAT} {model}"
