"""Property-based fuzzing of the commands' flags (hypothesis): whatever values a command line
gives main_retrieval.py or ``python -m tvr.index``, the only outcomes are a parsed run whose
configuration builds, or the program's own one-line usage error - never another exception. The property that a configuration
builds whenever the flags were accepted is what "one declaration of each bound" promises."""
import contextlib
import io
import math

from hypothesis import HealthCheck, given, settings, strategies as st

from tvr.cli import index as index_cli
from tvr.cli.flags import FLAGS, declared, flag_values, run_config
from tvr.cli.retrieval import parse_args

PREFIX = "main_retrieval.py: error: "
NUMBERS = st.one_of(st.integers(-2**40, 2**40), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 1e-320, 1e308, 256, 257, 1024, 1025, 77, 78]))


def value_text(draw, name: str) -> str:
    """A command-line value for flag ``name``: mostly of its kind, sometimes anything."""
    flag = FLAGS[name]
    if flag.setting.choices is not None and draw(st.booleans()):
        return str(draw(st.sampled_from(flag.setting.choices)))
    if flag.kind in (int, float) and draw(st.integers(0, 3)):
        number = draw(NUMBERS)
        return repr(number) if isinstance(number, float) and not math.isnan(number) else \
            str(number)
    return draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=12))


@st.composite
def command_lines(draw) -> list[str]:
    names = draw(st.lists(st.sampled_from(sorted(FLAGS)), max_size=6, unique=True))
    argv = ["--anno_path", "anns", "--video_path", "videos"]
    for name in names:
        if FLAGS[name].kind is bool:
            argv.append(f"--{name}")
        else:
            argv.append(f"--{name}={value_text(draw, name)}")
    return argv


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(command_lines())
def test_any_flag_values_parse_or_fail_in_one_line(argv: list[str]) -> None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = parse_args(argv)
    except SystemExit as stop:
        lines = stderr.getvalue().strip().splitlines()
        assert stop.code == 2 and "Traceback" not in stderr.getvalue(), stderr.getvalue()
        assert lines[-1].startswith(PREFIX) and sum(PREFIX in line for line in lines) == 1
        return
    config = run_config(args)  # accepted flags always make a configuration, holding them
    assert dict(flag_values(config)) == {name: getattr(args, name) for name in FLAGS}


def index_command_lines(command: str, config_type: type):
    """``python -m tvr.index COMMAND`` argument lists with fuzzed values for its settings."""
    flags = {flag.setting.flag: flag for flag in declared(config_type)}

    @st.composite
    def lines(draw) -> list[str]:
        argv = [command] + ([] if command == "build" else ["no_index_here"])
        for name in draw(st.lists(st.sampled_from(sorted(flags)), max_size=5, unique=True)):
            flag = flags[name]
            if flag.kind is bool:
                argv.append(f"--{name}")
            elif flag.kind in (int, float) and draw(st.booleans()):
                argv.append(f"--{name}={draw(NUMBERS)}")
            else:
                argv.append(f"--{name}={draw(st.text(max_size=8))}")
        return argv
    return lines()


INDEX_COMMANDS = st.one_of(*(index_command_lines(name, config_type)
                             for name, (config_type, _, _) in index_cli.COMMANDS.items()))


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(INDEX_COMMANDS)
def test_any_index_flag_values_fail_in_one_line(argv: list[str]) -> None:
    """No argument list here names an existing checkpoint or index, so every run of
    ``python -m tvr.index`` must end in the program's one error line: exit status 2 for a flag,
    1 for what it finds at run time, never a traceback."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            code = index_cli.main(argv)
    except SystemExit as stop:
        code = stop.code
    text = stderr.getvalue()
    lines = text.strip().splitlines()
    assert code in (1, 2) and "Traceback" not in text, text
    assert lines and " error: " in lines[-1] and sum(" error: " in line for line in lines) == 1
