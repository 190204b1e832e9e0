"""What README.md says about behaviour, shown in-process: its examples load and behave as the
text around them says, and the defaults and limits it names are the ones the code keeps."""
import os
import pathlib
import re
import time

import pytest

from chatdaemon.bots import load_bot
from chatdaemon.config import Config, load_config
from chatdaemon.daemon import status_line
from chatdaemon.errors import ConfigError
from chatdaemon.handoffs import button_data, keep_button_data
from chatdaemon.hookserver import metrics
from chatdaemon.store import Retention, Store
from chatdaemon.testing import TestBot

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
REFUSED = "http://127.0.0.1:1"   # nothing listens on port 1: a request there is refused
A_HANDLER = "handlers:\n  - {name: hi, pattern: '^hi$', response: {text: hello}}\n"


def readme_yaml(first_key: str) -> str:
    """The README's ```yaml example that starts with `first_key:`."""
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    found = [block for block in blocks if block.startswith(f"{first_key}:")]
    assert len(found) == 1, f"README has {len(found)} yaml examples starting with {first_key}:"
    return found[0]


def write_bot(directory: pathlib.Path, text: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bot.yaml").write_text(text, encoding="utf-8")
    return str(directory)


# -- the examples, as printed -----------------------------------------------------------------

def test_the_order_example_walks_its_states_and_keeps_them_when_the_request_fails(tmp_path):
    bot = TestBot(write_bot(tmp_path / "orders", readme_yaml("env")), environ={"SHOP_API": REFUSED})
    bot.send("/start", user={"id": 1, "is_bot": False, "first_name": "Ana"})
    assert bot.replies() == ["Hi Ana! What can I do? \N{WAVING HAND SIGN}"]
    assert bot.state() == "menu"
    bot.send("ORDER STATUS")
    assert bot.replies() == ["Your order number?"]
    bot.send("42")
    # a refused request answers with on_error and leaves state and vars as they were
    assert bot.replies() == ["I couldn't look that up right now."]
    assert bot.state() == "order"
    assert "last_order" not in bot.vars()
    bot.send("what?")
    assert bot.replies() == ["Sorry, I didn't get that. Try /start."]


def test_the_tree_example_picks_by_button_number_or_piece_of_label(tmp_path):
    bot = TestBot(write_bot(tmp_path / "tree", readme_yaml("tree")))
    bot.send("/help")
    assert bot.replies() == ["What can I help you with?"]
    bot.send("wi")                      # a piece of "Wi-Fi", punctuation ignored
    assert bot.replies() == ["Which network?"]
    bot.send("1")                       # the option's number
    assert bot.replies() == ["cafe-guest, password on the receipt."]
    bot.send("/start")
    bot.send("wifi")
    bot.send("Staff network")           # the button's label
    assert bot.replies() == ["What can I help you with?", "Which network?",
                             "Please ask at the counter."]


def test_the_tree_example_asks_again_after_a_leaf_and_anything_but_yes_leaves(tmp_path):
    bot = TestBot(write_bot(tmp_path / "tree", readme_yaml("tree")))
    bot.send("/start")
    bot.send("Opening hours")
    bot.send("thanks")                  # the message after a leaf is never left unanswered
    assert bot.replies()[-1] == "Anything else? Start again?"
    bot.send("maybe later")             # not "yes": goodbye, out of the tree
    assert bot.replies() == ["OK. Send /start whenever you want to start again."]
    bot.send("/start")
    bot.send("nonsense")
    assert bot.replies()[-1] == "Sorry, I didn't understand that. Start again?"
    bot.send("yes")
    assert bot.replies() == ["What can I help you with?"]


def test_the_tree_leaf_hands_the_conversation_to_its_target_state(tmp_path):
    bot = TestBot(write_bot(tmp_path / "tree", readme_yaml("tree")))
    bot.send("/start")
    bot.send("3")
    assert bot.replies()[-1] == "Leave your question here."
    assert bot.state() == "question"


def test_the_hooks_example_loads_with_its_key_and_defaults_to_600_posts_a_minute(tmp_path):
    text = readme_yaml("hooks") + A_HANDLER
    bot = load_bot(write_bot(tmp_path / "door", text), environ={"DOOR_HOOK_KEY": "k" * 20})
    door = bot.definitions.hooks["door"]
    assert door.rate_limit == 60
    unset = text.replace("    rate_limit: 60", "")
    bot = load_bot(write_bot(tmp_path / "door2", unset), environ={"DOOR_HOOK_KEY": "k" * 20})
    assert bot.definitions.hooks["door"].rate_limit == 600


def test_the_hooks_example_without_its_key_variable_is_an_error_naming_it(tmp_path):
    text = readme_yaml("hooks") + A_HANDLER
    with pytest.raises(ConfigError) as caught:
        load_bot(write_bot(tmp_path / "door", text), environ={})
    assert "DOOR_HOOK_KEY" in str(caught.value)


def test_the_late_results_example_loads_and_names_its_callback_handler(tmp_path):
    bot = load_bot(write_bot(tmp_path / "report", readme_yaml("handlers")),
                   environ={"UPSTREAM": REFUSED})
    assert [name for name, _ in bot.definitions.callback_handlers] == ["report"]


def test_the_retention_example_is_a_config_the_daemon_reads(tmp_path):
    path = tmp_path / "chatdaemon.yaml"
    path.write_text(readme_yaml("retention"), encoding="utf-8")
    retention = load_config(str(path)).retention
    assert retention.keep_handled == 48 * 3600
    assert retention.max_database_bytes == 64 * 2 ** 20
    assert retention.forget_conversations_after is None   # off keeps what a bot saved


def test_keep_handled_under_24_hours_is_refused(tmp_path):
    path = tmp_path / "chatdaemon.yaml"
    path.write_text("retention: {keep_handled: 23h}\n", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_config(str(path))


# -- defaults and limits the text names ----------------------------------------------------------

def test_without_a_fallback_the_bot_says_it_did_not_understand(tmp_path):
    bot = TestBot(write_bot(tmp_path / "b", A_HANDLER))
    bot.send("what?")
    assert bot.replies() == ["Sorry, I didn't understand that."]


def test_fallback_none_is_silence(tmp_path):
    bot = TestBot(write_bot(tmp_path / "b", A_HANDLER + "fallback: none\n"))
    bot.send("what?")
    assert bot.replies() == []


def test_a_request_timeout_over_60_seconds_is_refused(tmp_path):
    text = ("handlers:\n  - name: slow\n    request: {method: GET, url: 'http://127.0.0.1:1/', "
            "timeout: 61}\n    response: {text: done}\n")
    with pytest.raises(ConfigError) as caught:
        load_bot(write_bot(tmp_path / "b", text))
    assert "at most 60" in str(caught.value)


def test_a_schedule_ticks_at_most_every_5_seconds(tmp_path):
    directory = tmp_path / "ticker"
    directory.mkdir()
    (directory / "bot.yaml").write_text("python: ticker:Ticker\n", encoding="utf-8")
    (directory / "ticker.py").write_text(
        "from chatdaemon import ChatHandler\n\n\n"
        "class Ticker(ChatHandler):\n"
        "    def on_chat_message(self, msg):\n"
        "        try:\n"
        "            self.start_schedule('t', float(msg['text']))\n"
        "        except ValueError:\n"
        "            self.sender.sendMessage('refused')\n"
        "            return\n"
        "        self.sender.sendMessage('started')\n", encoding="utf-8")
    bot = TestBot(str(directory))
    bot.send("4.9")
    bot.send("5")
    assert bot.replies() == ["refused", "started"]


def test_the_daemon_defaults_the_readme_names():
    config = Config()
    assert config.handlers == "handlers/counter"
    assert config.api_url == "https://api.telegram.org"
    assert (config.max_delegates, config.update_timeout) == (64, 60.0)
    assert (config.yield_after, config.yield_seconds) == (20, 5.0)
    assert config.handoff_timeout == 600.0
    assert config.callback_expiry == 24 * 3600
    assert config.forget_command == "/forget"
    assert config.hook_bind == "127.0.0.1"


def test_the_shipped_sample_config_loads():
    sample = README.parent / "config" / "chatdaemon.yaml"
    assert os.path.isfile(sample)
    load_config(str(sample))


def test_a_tree_bot_without_a_fallback_names_the_command_that_opens_it(tmp_path):
    bot = TestBot(write_bot(tmp_path / "tree", readme_yaml("tree")))
    bot.send("hello")
    assert bot.replies() == ["Sorry, I didn't understand that. Send /start to see the options."]


def choices_bot(directory: pathlib.Path, numbered: bool) -> TestBot:
    directory.mkdir()
    (directory / "bot.yaml").write_text("python: menu:Menu\n", encoding="utf-8")
    (directory / "menu.py").write_text(
        "from chatdaemon import ChatHandler\n\n\n"
        "class Menu(ChatHandler):\n"
        f"    numbered_choices = {numbered}\n\n"
        "    def on_chat_message(self, msg):\n"
        "        if msg['text'] == '/menu':\n"
        "            self.sender.sendMessage('pick', reply_markup={'keyboard': [['tea'], ['coffee']]})\n"
        "        else:\n"
        "            self.sender.sendMessage('got ' + msg['text'])\n", encoding="utf-8")
    return TestBot(str(directory))


def test_a_python_handler_gets_a_typed_number_as_the_label_it_picks(tmp_path):
    bot = choices_bot(tmp_path / "on", numbered=True)
    bot.send("/menu")
    bot.send("2")
    assert bot.replies() == ["pick", "got coffee"]


def test_numbered_choices_false_leaves_typed_numbers_as_typed(tmp_path):
    bot = choices_bot(tmp_path / "off", numbered=False)
    bot.send("/menu")
    bot.send("2")
    assert bot.replies() == ["pick", "got 2"]


@pytest.mark.parametrize("unit", ["chatdaemon.service", "chatdaemon@.service"])
def test_the_units_carry_the_settings_the_readme_names(unit):
    lines = (README.parent / "systemd" / unit).read_text(encoding="utf-8").splitlines()
    for setting in ("Type=notify", "DynamicUser=yes", "StateDirectoryMode=0700", "MemoryMax=200M",
                    "WatchdogSec=120", "Restart=on-failure", "RestartPreventExitStatus=76 78",
                    "Environment=MALLOC_ARENA_MAX=2", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert setting in lines, f"{unit}: no {setting}"
    assert any(line.startswith("LoadCredential=token:") for line in lines)


class _Door:
    """What /metrics reads from the daemon: its counters and its status."""

    def counters(self):
        return {"updates_received_total": 7, "updates_handled_total": 6, "updates_failed_total": 1,
                "replies_sent_total": 5, "telegram_429_total": 2, "telegram_retries_total": 3}

    def status(self):
        return {"backlog": 4, "delegates": 8, "waiting_chats": 0, "last_poll_age": 1.5}


def test_metrics_give_every_counter_the_readme_lists_in_prometheus_text():
    text = metrics(_Door())
    values = dict(line.split(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    assert values == {
        "chatdaemon_updates_received_total": "7", "chatdaemon_updates_handled_total": "6",
        "chatdaemon_updates_failed_total": "1", "chatdaemon_replies_sent_total": "5",
        "chatdaemon_telegram_429_total": "2", "chatdaemon_telegram_retries_total": "3",
        "chatdaemon_hooks_accepted_total": "0", "chatdaemon_queue_depth": "4",
        "chatdaemon_delegates_alive": "8", "chatdaemon_chats_waiting": "0",
        "chatdaemon_last_poll_age_seconds": "1.5"}
    assert "# TYPE chatdaemon_queue_depth gauge" in text.splitlines()


def keyboard_bot(directory: pathlib.Path, labels: list[str]) -> TestBot:
    rows = ", ".join(f"['{label}']" for label in labels)
    return TestBot(write_bot(directory, "handlers:\n  - name: menu\n    pattern: '^/menu$'\n"
                                        f"    response: {{text: pick, keyboard: [{rows}]}}\n"))


def sent_markup(bot: TestBot) -> dict:
    bot.send("/menu")
    return bot.calls[-1].params["reply_markup"]


@pytest.mark.parametrize("labels, as_buttons", [
    ([f"option {n}" for n in range(1, 13)], True),     # 12 options
    ([f"option {n}" for n in range(1, 14)], False),    # 13: a numbered list
    (["x" * 40, "y"], True),                           # a 40-character label
    (["x" * 41, "y"], False),                          # 41: a numbered list
])
def test_up_to_12_options_of_up_to_40_characters_are_buttons(tmp_path, labels, as_buttons):
    markup = sent_markup(keyboard_bot(tmp_path / "menu", labels))
    assert ("keyboard" in markup) is as_buttons, markup


@pytest.mark.parametrize("forget_after, kept_days", [(None, 30), (7 * 86400, 7)])
def test_long_button_data_is_kept_30_days_unless_conversations_are_forgotten_sooner(
        tmp_path, forget_after, kept_days):
    store = Store(str(tmp_path / "t.sqlite3"))
    try:
        conversation = store.load_conversation(1)
        conversation.state = "menu"
        store.finish(None, conversation, writes=[keep_button_data("tok", "long data", 1)])
        created = time.time()
        retention = Retention(forget_conversations_after=forget_after)
        store.apply_retention(retention, now=created + kept_days * 86400 - 60)
        assert button_data(store, "tok") == "long data"
        store.apply_retention(retention, now=created + kept_days * 86400 + 60)
        assert button_data(store, "tok") is None
    finally:
        store.close()


def closing_bot(directory: pathlib.Path) -> TestBot:
    directory.mkdir()
    (directory / "bot.yaml").write_text("python: closing:Closing\n", encoding="utf-8")
    (directory / "closing.py").write_text(
        "from chatdaemon import ChatHandler, WaitTooLong\n\n\n"
        "class Closing(ChatHandler):\n"
        "    def on_chat_message(self, msg):\n"
        "        self.sender.sendMessage('hi')\n\n"
        "    def on_close(self, reason):\n"
        "        self.vars['closed'] = [type(reason).__name__, str(reason),\n"
        "                               isinstance(reason, WaitTooLong),\n"
        "                               [reason == name for name in ('idle', 'evicted', 'reload')]]\n",
        encoding="utf-8")
    return TestBot(str(directory))


@pytest.mark.parametrize("how, closed", [
    ("idle", ["IdleTerminate", "idle", True, [True, False, False]]),
    ("evicted", ["Evicted", "evicted", False, [False, True, False]]),
    ("reload", ["Reloaded", "reload", False, [False, False, True]]),
])
def test_on_close_reasons_are_exceptions_that_equal_their_old_names(tmp_path, how, closed):
    bot = closing_bot(tmp_path / "closing")
    bot.send("hello")
    bot.end(reason=how)
    assert bot.vars()["closed"] == closed    # on_close's own changes to vars are saved


class _Running:
    """A running daemon's status, as the unit's STATUS= line reads it."""

    def status(self):
        return {"delegates": 0, "waiting_chats": 0, "backlog": 0, "last_poll_age": 2.2,
                "last_error": None}


def test_the_status_systemctl_shows_starts_with_polling_and_the_active_chats():
    assert status_line(_Running()) == "polling; 0 chat(s) active, 0 waiting, backlog 0; last poll 2 s ago"


def test_an_optional_group_that_did_not_match_renders_as_empty_text(tmp_path):
    bot = TestBot(write_bot(tmp_path / "b", (
        "handlers:\n  - name: hi\n    pattern: '^/hi( (?P<name>\\w+))?$'\n"
        "    response: {text: 'hi [{{ pattern.name }}] [{{ pattern[2] }}]'}\n")))
    bot.send("/hi")
    bot.send("/hi Ana")
    assert bot.replies() == ["hi [] []", "hi [Ana] [Ana]"]


def test_higher_priority_wins_then_file_order_and_no_pattern_matches_anything(tmp_path):
    bot = TestBot(write_bot(tmp_path / "b", (
        "handlers:\n"
        "  - {name: first, pattern: '^a', response: {text: first}}\n"
        "  - {name: second, pattern: '^ab', response: {text: second}}\n"
        "  - {name: urgent, pattern: '^abc$', priority: 5, response: {text: urgent}}\n"
        "  - {name: anything, response: {text: anything}}\n")))
    for text in ("abc", "ab", "zzz"):
        bot.send(text)
    assert bot.replies() == ["urgent", "first", "anything"]


def test_an_empty_answer_gets_on_error_and_leaves_state_and_vars_as_they_were(tmp_path):
    bot = TestBot(write_bot(tmp_path / "b", (
        "handlers:\n  - name: echo\n    pattern: '^/echo( (?P<word>\\w+))?$'\n"
        "    response: {text: '{{ pattern.word }}'}\n"
        "    on_error: {text: 'nothing to echo'}\n"
        "    save: {last: '{{ pattern.word }}'}\n"
        "    target_state: echoed\n")))
    bot.send("/echo")
    assert bot.replies() == ["nothing to echo"]
    assert (bot.state(), bot.vars()) == (None, {})
    bot.send("/echo hi")
    assert bot.replies() == ["hi"]
    assert (bot.state(), bot.vars()) == ("echoed", {"last": "hi"})


def test_a_handler_module_may_be_called_json_and_import_its_neighbours(tmp_path):
    directory = tmp_path / "pybot"
    directory.mkdir()
    (directory / "bot.yaml").write_text("python: json:Echo\n", encoding="utf-8")
    (directory / "helper.py").write_text("GREETING = 'hello from helper'\n", encoding="utf-8")
    (directory / "json.py").write_text(
        "import json as stdlib_json\n\n"
        "from chatdaemon import ChatHandler\n\n"
        "from . import helper\n\n\n"
        "class Echo(ChatHandler):\n"
        "    def on_chat_message(self, msg):\n"
        "        self.sender.sendMessage(helper.GREETING + ' ' + stdlib_json.dumps(msg['text']))\n",
        encoding="utf-8")
    bot = TestBot(str(directory))
    bot.send("hi")
    assert bot.replies() == ['hello from helper "hi"']


def test_the_testing_example_passes_as_printed(monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    [example] = [block for block in blocks if "from chatdaemon.testing import TestBot" in block]
    monkeypatch.chdir(README.parent)          # it names handlers/counter from the checkout
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    tests = [value for name, value in namespace.items() if name.startswith("test_")]
    assert len(tests) == 1
    tests[0]()


def test_the_counter_example_class_counts_as_printed(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    [example] = [block for block in blocks if "class MessageCounter" in block]
    directory = tmp_path / "counter"
    directory.mkdir()
    (directory / "bot.yaml").write_text("python: counter:MessageCounter\n", encoding="utf-8")
    (directory / "counter.py").write_text(example, encoding="utf-8")
    bot = TestBot(str(directory))
    for text in ("a", "b", "c"):
        bot.send(text)
    assert bot.replies() == ["1", "2", "3"]
    assert bot.vars() == {"count": 3}


def test_a_tree_opens_on_start_by_default_and_shows_its_answers_as_a_keyboard(tmp_path):
    bot = TestBot(write_bot(tmp_path / "tree", (
        "tree:\n  say: Pick one\n  answers:\n    Tea: Hot water first.\n"
        "    Coffee: {say: Which one, answers: {Espresso: Small., Filter: Large.}}\n")))
    bot.send("/help")
    assert bot.replies() == ["Sorry, I didn't understand that. Send /start to see the options."]
    bot.send("/start")
    assert bot.replies() == ["Pick one"]
    assert bot.calls[-1].params["reply_markup"]["keyboard"] == [[{"text": "Tea"}], [{"text": "Coffee"}]]
    bot.send("coffee")
    bot.send("filter")
    assert bot.replies() == ["Which one", "Large."]
