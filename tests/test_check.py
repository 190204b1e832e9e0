"""`chatdaemon check` and bot loading: every mistake named with its file and line."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from conftest import HANDLERS, ROOT

from chatdaemon.bots import load_bot
from chatdaemon.errors import ConfigError

EXAMPLES = ["counter", "guess", "diceyclock", "signup", "orders", "helpdesk"]


def bot_dir(tmp_path, **files):
    directory = tmp_path / "bot"
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / f"{name}.yaml").write_text(textwrap.dedent(text))
    return directory


def load_error(tmp_path, text, **more) -> str:
    with pytest.raises(ConfigError) as info:
        load_bot(str(bot_dir(tmp_path, a=text, **more)))
    return str(info.value)


def run_check(directory, env=None):
    return subprocess.run([sys.executable, "-m", "chatdaemon", "check", "--handlers", str(directory)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_shipped_example_passes_check(name):
    result = run_check(HANDLERS / name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"handlers/{name}" in result.stdout


def test_check_summarises_handlers_by_state_and_missing_env(tmp_path):
    result = run_check(HANDLERS / "orders", env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0
    assert "in menu:" in result.stdout and "order:" in result.stdout
    assert "+ request" in result.stdout
    assert "env: shop_api" in result.stdout


def test_missing_env_variable_without_default_is_reported(tmp_path):
    directory = bot_dir(tmp_path, a="""
        env: {api: "${NO_SUCH_VARIABLE_SET}"}
        handlers:
          - {name: a, response: {text: "x"}}
    """)
    result = run_check(directory)
    assert result.returncode == 78
    assert "a.yaml:2: env.api: environment variable NO_SUCH_VARIABLE_SET is not set" \
        in result.stderr


def test_duplicate_handler_names_across_files(tmp_path):
    message = load_error(tmp_path, """
        handlers:
          - {name: start, pattern: '^/start$', response: {text: "a"}}
    """, b="""
        handlers:
          - {name: start, response: {text: "b"}}
    """)
    assert "duplicate handler name 'start'" in message
    assert "b.yaml:3" in message and "a.yaml:3" in message


def test_unknown_key_names_file_and_line(tmp_path):
    message = load_error(tmp_path, """
        handlers:
          - name: start
            patern: '^/start$'
            response: {text: "a"}
    """)
    assert "unknown key 'patern'" in message and "a.yaml:4" in message


def test_regex_that_does_not_compile(tmp_path):
    message = load_error(tmp_path, """
        handlers:
          - name: start
            pattern: '^(unclosed'
            response: {text: "a"}
    """)
    assert "pattern does not compile" in message and "a.yaml:4" in message


def test_template_that_does_not_parse(tmp_path):
    message = load_error(tmp_path, """
        handlers:
          - name: start
            response:
              text: "Hi {{ user.first_name "
    """)
    assert "template error" in message and "a.yaml:5" in message


def test_template_with_an_unknown_name(tmp_path):
    message = load_error(tmp_path, """
        handlers:
          - name: start
            response: {text: "Hi {{ usr.first_name }}"}
    """)
    assert "unknown name(s): usr" in message and "a.yaml:4" in message


def test_source_state_that_nothing_enters(tmp_path):
    message = load_error(tmp_path, """
        handlers:
          - name: start
            pattern: '^/start$'
            response: {text: "a"}
            target_state: menu
          - name: order
            source_states: [ordering]
            response: {text: "b"}
    """)
    assert "no handler has target_state 'ordering'" in message and "a.yaml:7" in message


def test_state_without_handlers_is_a_warning(tmp_path):
    directory = bot_dir(tmp_path, a="""
        handlers:
          - name: start
            source_states: [menu]
            response: {text: "a"}
            target_state: menu
          - name: leave
            source_states: [menu]
            pattern: '^bye$'
            response: {text: "b"}
            target_state: gone
    """)
    result = run_check(directory)
    assert result.returncode == 0
    assert "warning:" in result.stdout and "'gone'" in result.stdout


def test_yaml_syntax_error_and_bad_request(tmp_path):
    assert "YAML syntax error" in load_error(tmp_path, "handlers: [\n")
    message = load_error(tmp_path, """
        handlers:
          - name: r
            request: {url: "ftp://x/", timeout: 5}
            response: {text: "a"}
    """)
    assert "http:// or https://" in message


def test_python_and_yaml_handlers_together_are_refused(tmp_path):
    message = load_error(tmp_path, """
        python: x:Y
        handlers:
          - {name: a, response: {text: "x"}}
    """)
    assert "not both" in message


def test_check_exits_non_zero_with_file_line(tmp_path):
    directory = bot_dir(tmp_path, a="handlers:\n  - {name: a, response: {text: '{{ oops'}}\n")
    result = run_check(directory)
    assert result.returncode == 78
    assert "a.yaml:2" in result.stderr


def test_run_refuses_to_start_on_errors(tmp_path):
    directory = bot_dir(tmp_path, a="handlers:\n  - {name: a, response: {text: '{{ oops'}}\n")
    result = subprocess.run(
        [sys.executable, "-m", "chatdaemon", "run", "--handlers", str(directory),
         "--db", str(tmp_path / "x.sqlite3"), "--api-url", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60,
        env={"CHATDAEMON_TOKEN": "123456:abcdefghijklmnop", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 78
    assert "a.yaml:2" in result.stderr


def test_python_handler_import_error_names_the_line(tmp_path):
    directory = bot_dir(tmp_path, a="python: mod:Handler\n")
    (directory / "mod.py").write_text("import os\n\nraise ValueError('broken module')\n")
    with pytest.raises(ConfigError) as info:
        load_bot(str(directory))
    assert "mod.py:3" in str(info.value) and "broken module" in str(info.value)


def test_a_bad_api_url_is_a_clear_config_error(tmp_path):
    directory = bot_dir(tmp_path, a="python: x:Y\n")
    result = subprocess.run(
        [sys.executable, "-m", "chatdaemon", "run", "--handlers", str(directory),
         "--api-url", "ftp://example.org"], capture_output=True, text=True, timeout=60,
        env={"CHATDAEMON_TOKEN": "123456:abcdefghijklmnop", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 78
    assert "must look like https://host" in result.stderr and "Traceback" not in result.stderr


def test_an_api_url_that_is_no_bot_api_is_not_called_a_bad_token(tmp_path):
    from shop_server import ShopServer
    with ShopServer() as shop:
        result = subprocess.run(
            [sys.executable, "-m", "chatdaemon", "run", "--handlers", str(HANDLERS / "counter"),
             "--db", str(tmp_path / "x.sqlite3"), "--api-url", shop.url],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={"CHATDAEMON_TOKEN": "123456:abcdefghijklmnop", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 78
    assert "is not a Bot API" in result.stderr and "rejected" not in result.stderr


def test_yaml_booleans_and_parse_mode_spelling(tmp_path):
    message = load_error(tmp_path, """
        handlers:
          - {name: a, response: {text: yes}}
    """)
    assert "put it in quotes" in message and "a.yaml:3" in message
    bot = load_bot(str(bot_dir(tmp_path, a="""
        handlers:
          - {name: a, response: {text: "<b>x</b>", parse_mode: html}}
    """)))
    assert bot.definitions.handlers[0].response.parse_mode == "HTML"  # as Telegram spells it


def test_handlers_after_a_catch_all_are_reported(tmp_path):
    directory = bot_dir(tmp_path, a="""
        handlers:
          - {name: anything, response: {text: "x"}}
          - {name: start, pattern: '^/start$', response: {text: "y"}}
    """)
    result = run_check(directory)
    assert result.returncode == 0
    assert "handler start never runs: anything" in result.stdout


def test_a_bad_log_level_is_a_usage_error_not_a_crash(tmp_path):
    result = subprocess.run([sys.executable, "-m", "chatdaemon", "run", "--log-level", "verbose"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={"CHATDAEMON_TOKEN": "123456:abcdefghijklmnop", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "'verbose' is not one of DEBUG, INFO, WARNING, ERROR" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_state_no_chain_of_handlers_reaches_is_a_warning(tmp_path):
    directory = bot_dir(tmp_path, a="""
        handlers:
          - name: start
            pattern: '^/start$'
            response: {text: "hi"}
            target_state: menu
          - name: pay
            source_states: [menu]
            pattern: '^pay$'
            response: {text: "paying"}
            target_state: paying
          - name: refund
            source_states: [refunding]
            response: {text: "refunded"}
            target_state: menu
          - name: ask_refund
            source_states: [refunding]
            pattern: '^again$'
            response: {text: "again?"}
            target_state: refunding
    """)
    result = run_check(directory)
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    # refunding is entered only from refunding itself: nothing leads there from /start
    assert any("handler refund never runs" in w and "'refunding'" in w and "a.yaml:12" in w
               for w in warnings), warnings
    assert any("handler ask_refund never runs" in w for w in warnings), warnings
    assert not any("handler pay never runs" in w for w in warnings), warnings


def test_tree_mistakes_name_their_line(tmp_path):
    message = load_error(tmp_path, """
        tree:
          say: "Hi"
          answers:
            - answer: Hours
              say: "9-17"
            - answer: hours
              say: "again"
    """)
    assert "'hours' is listed twice" in message and "a.yaml:7" in message
    message = load_error(tmp_path, """
        tree:
          say: "Hi"
          answers:
            - answer: Hours
              answers: []
    """)
    assert "needs `say:`" in message and "a.yaml:5" in message
    message = load_error(tmp_path, """
        tree:
          say: "Hi"
          answers:
            - {answer: yes, say: "ok"}
    """)
    assert "quote yes/no" in message
    message = load_error(tmp_path, """
        tree:
          say: "Hi {{ usr.first_name }}"
          answers: [{answer: A, say: a}]
    """)
    assert "unknown name(s): usr" in message and "a.yaml:3" in message
    message = load_error(tmp_path, """
        tree:
          say: "Hi"
          asnwers: [{answer: A, say: a}]
    """)
    assert "unknown key 'asnwers'" in message and "a.yaml:4" in message


def test_a_tree_alone_is_a_bot_and_check_describes_it(tmp_path):
    directory = bot_dir(tmp_path, a="""
        tree:
          pattern: '^/menu$'
          say: "Pick"
          answers:
            - {answer: A, say: "a", target_state: picked}
            - {answer: B, say: "b", answers: [{answer: C, say: "c"}]}
        handlers:
          - name: after
            source_states: [picked]
            response: {text: "done"}
    """)
    result = run_check(directory)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tree: 4 node(s), started by ^/menu$" in result.stdout
    assert "warning" not in result.stdout  # 'picked' is entered by the tree
