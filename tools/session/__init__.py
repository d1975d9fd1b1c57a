"""start_session, load_sae and session_status: what the session holds, as tools."""

from session.state import SessionStatus
from tools.session.models import SessionCard, SessionStatusInput, StartSessionInput
from toolserver.contract import ToolSpec, lazy

START = ToolSpec(
    name="start_session",
    command="session start",
    card="session",
    summary=(
        "Start (or switch to) a session on a model: a catalog slug, a Hugging Face id or a local save_pretrained "
        "directory; detects whether it is a causal LM or an encoder. Call this first; later calls use this session. "
        "Cost: reads config files only, under a second, no GPU (a hub id not yet in the HF cache is downloaded first, "
        "minutes for large models). Next: run_weight_diff on a checkpoint, load_sae for SAE analyses."
    ),
    input_model=StartSessionInput,
    output_model=SessionStatus,
    slim_model=SessionCard,
    run=lazy("tools.session.run:run_start"),
    slim=lazy("tools.session.report:slim_status"),
    table=lazy("tools.session.report:table_status"),
    needs_session=False,
    session_arg="id",
)

STATUS = ToolSpec(
    name="session_status",
    command="session status",
    card="session",
    summary=(
        "Show the current session: model, kind, layers, SAE and hook, the recent calls, and whether the model "
        "is already in memory. Use to check what later calls will analyse. Cost: instant, reads the state file. "
        "Next: the follow_ups it suggests (load_sae, run_weight_diff)."
    ),
    input_model=SessionStatusInput,
    output_model=SessionStatus,
    slim_model=SessionCard,
    run=lazy("tools.session.run:run_status"),
    slim=lazy("tools.session.report:slim_status"),
    table=lazy("tools.session.report:table_status"),
)

TOOLS = [START, STATUS]
