"""The pipeline: match a handler (state, pattern, priority) → optional HTTP request → render → reply.

A handler's target state, saved variables and state context change only when every step
succeeded; a failing request or template answers with the handler's `on_error` (or the
bot's error text) and raises UpdateFailed, carrying the cause with the handler's name and
file:line: the update transaction rolls back whatever the update changed (one mechanism
for every failure) and logs it.

Templates get read-only data: every value in their context is a copy that refuses changes
(`FrozenDict`, tuples), so no template can alter a conversation, `emoji`, `env` or another
chat's data.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import callbacks, handoffs
from .chathandler import ChatHandler
from .definitions import Definitions, Handler, Media, Response, literal_of
from .errors import UpdateFailed
from .httpcall import RequestFailed, Trusted, new_session, perform
from .media import media_value
from .patterns import MATCH_SECONDS, Match, PatternTimeout, search
from .templates import EMOJI, Template, TemplateError, escape_markdown_v2
from .tree import DONE_PREFIX, RETRY_PREFIX, YES, Node, Tree, in_tree, pick

log = logging.getLogger(__name__)

MAX_CONTEXT_TEXT = 16 * 1024  # a response kept in state_context is dropped past this size
CHOICES = "chatdaemon:choices"  # state_context key: the options of the latest keyboard sent
SEEN = "chatdaemon:seen"        # state_context key: when the person last wrote (session_timeout)
SESSION = "chatdaemon.session"  # the schedule that checks session_timeout
MAX_OPTIONS = 12     # more options than this are sent as a numbered list, not as buttons
MAX_LABEL = 40       # and so are labels longer than this (a button would cut them)
MAX_DATA = 64        # bytes of callback_data Telegram accepts
MAX_BUTTONS = 100    # a keyboard rendered from a template has at most this many buttons
TOKEN_PREFIX = "~t:"  # callback_data standing for longer data kept in the database
EXPIRED_BUTTON = "This button has expired."   # its token was pruned (or forgotten)
MIN_SESSION_TICK = 5.0  # the session check ticks every quarter of the timeout, at least this
_ADDRESSED = re.compile(r"(/\w+)@(\w+)")   # /command@bot_username, how groups address a bot


def with_text(msg: dict) -> dict:
    """The message as handlers and templates read it: its `text` is its text, or else its
    caption (a photo, a document), or else empty (a sticker, a location). Telegram's other
    fields stay as they came."""
    text = msg.get("text")
    if isinstance(text, str) and text:
        return msg
    caption = msg.get("caption")
    return {**msg, "text": caption if isinstance(caption, str) else ""}


class FrozenDict(dict):
    """A dict a template can read but not change: every method that would change it raises."""

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("template data is read-only")

    # every method that would change the dict refuses, whatever the signature it replaces
    __setitem__ = __delitem__ = __ior__ = _refuse  # type: ignore[assignment]
    update = clear = pop = popitem = setdefault = _refuse  # type: ignore[assignment]


_PLAIN = frozenset({str, int, float, bool, type(None)})  # immutable already: no call needed


def frozen(value: Any) -> Any:
    """A read-only deep copy of JSON-like data: dicts become FrozenDicts, lists tuples."""
    if isinstance(value, FrozenDict):
        return value
    if isinstance(value, dict):
        return FrozenDict({key: item if type(item) in _PLAIN else frozen(item)
                           for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(item if type(item) in _PLAIN else frozen(item) for item in value)
    return value


READ_ONLY_EMOJI = frozen(EMOJI)


@dataclass
class Pipeline:
    """What every chat of a YAML bot shares: compiled definitions and an HTTP session."""

    definitions: Definitions
    error_text: str
    callback_base: str | None = None   # where conversation.callback_url points; None: nowhere
    callback_expiry: float = callbacks.DEFAULT_EXPIRY
    username: str | None = None   # the bot's own @username (getMe); None: every @name is its own

    def __post_init__(self) -> None:
        self.session = new_session()
        self.env = frozen({name: Trusted(value) for name, value in self.definitions.env.items()})

    def match(self, text: str, state: str | None) -> tuple[Handler | None, Match | None]:
        """The first handler (highest priority, then file order) whose state and pattern fit.

        A pattern that cannot decide within the message's bound raises PatternTimeout rather
        than counting as "no match": a lower handler or the fallback would answer text its
        author meant for the stuck handler, and the user would not learn that the bot failed.
        """
        deadline = time.monotonic() + MATCH_SECONDS
        for handler in self.definitions.handlers:
            if not handler.accepts(state):
                continue
            if handler.pattern is None:
                return handler, None
            found = search(handler.pattern, text, deadline, f"handler {handler.name}",
                           handler.where)
            if found:
                return handler, found
        return None, None

    def starts_tree(self, text: str, state: str | None = None) -> bool:
        """Whether the text opens the decision tree (its pattern, within the same bound; or
        any message in no state, when the tree opens on any message)."""
        tree = self.definitions.tree
        if tree is None:
            return False
        if tree.any_message and state is None:
            return True
        deadline = time.monotonic() + MATCH_SECONDS
        return search(tree.pattern, text, deadline, "tree", tree.pattern_where or tree.where) \
            is not None


class PipelineHandler(ChatHandler):
    """A chat's handler for a bot written as YAML."""

    numbered_choices = False   # its own: inline buttons too, a handler's pattern first

    def __init__(self, context: Any, conversation: Any, sender: Any, pipeline: Pipeline):
        super().__init__(context, conversation, sender)
        self.pipeline = pipeline
        self._transaction = context   # stages what this update keeps besides the conversation

    def on_update(self, kind: str, payload: dict) -> None:
        if kind == "schedule" and payload.get("name") == SESSION:
            self._end_idle_session()
            return
        super().on_update(kind, payload)
        if kind in ("message", "callback_query"):
            self._keep_session()

    def _keep_session(self) -> None:
        """With session_timeout: note the person's activity; a conversation away from its start
        state is checked (a schedule, so across restarts) until it is idle that long."""
        timeout = self.pipeline.definitions.session_timeout
        if timeout is None:
            return
        if self.state is None:
            self._conversation.schedules.pop(SESSION, None)
            return
        self._conversation.state_context[SEEN] = time.time()
        self._conversation.schedules[SESSION] = {"every": max(MIN_SESSION_TICK, timeout / 4)}

    def _end_idle_session(self) -> None:
        timeout = self.pipeline.definitions.session_timeout
        seen = self._conversation.state_context.get(SEEN)
        if timeout is not None and isinstance(seen, (int, float)) and time.time() - seen < timeout:
            return
        log.info("chat %s: idle past session_timeout; back to the start state", self.chat_id)
        self.state = None
        self._conversation.state_context.clear()
        self._conversation.schedules.pop(SESSION, None)

    def on_chat_message(self, msg: dict) -> None:
        msg = with_text(msg)
        text = own_command(msg["text"], self.pipeline.username)
        if text is None:   # a deliberate silence: another bot's command, in a group
            log.info("chat %s: a command for another bot; not answered", self.chat_id)
            return
        choice = self._chosen(text)
        if choice is not None:
            kind, value = choice[0], choice[1]
            if kind == "url":  # a link button: give the link
                self._send({"text": value})
                return
            # a label typed by number; button data runs as if pressed
            data = self._button_data(value) if kind == "data" else value
            if data is None:
                self._send({"text": EXPIRED_BUTTON})
                return
            text = data
        self._answer(text, msg, msg, callback=None)

    def _chosen(self, text: str) -> list | None:
        """The option of the latest keyboard that a typed number picks, if it picks one.

        A handler whose own pattern matches the number itself comes first (a bot asking for
        a quantity while showing buttons); a catch-all or the fallback does not.
        """
        answer = text.strip()
        choices = self._conversation.state_context.get(CHOICES)
        if not answer.isdecimal() or len(answer) > 3 or not isinstance(choices, list):
            return None
        index = int(answer) - 1
        if not 0 <= index < len(choices):
            return None
        try:
            handler, _ = self.pipeline.match(answer, self.state)
        except PatternTimeout as exc:
            raise UpdateFailed(str(exc), answered=False) from None
        if handler is not None and handler.pattern is not None:
            return None
        return choices[index]

    def _send(self, reply: dict) -> None:
        """Send a reply; its keyboard becomes the options a typed number picks from."""
        markup = reply.get("reply_markup")
        if "photo" in reply:
            self.sender.sendPhoto(**reply)
        elif "document" in reply:
            self.sender.sendDocument(**reply)
        else:
            self.sender.sendMessage(**as_numbered_list(reply))
        choices = choices_of(markup)
        if choices:
            self._conversation.state_context[CHOICES] = choices
        elif choices is not None:  # the keyboard was removed
            self._conversation.state_context.pop(CHOICES, None)

    def on_callback_query(self, query: dict) -> None:
        data = self._button_data(str(query.get("data") or ""))
        if data is None:   # never silence: the spinner stops with a word why
            self.sender.answerCallbackQuery(callback_query_id=query["id"], text=EXPIRED_BUTTON)
            return
        self.sender.answerCallbackQuery(callback_query_id=query["id"])
        message = query.get("message") or {"chat": {"id": self.chat_id}}
        self._answer(data, message, query, callback=query)

    def _button_data(self, data: str) -> str | None:
        """Button data as the template rendered it: data too long for Telegram went out as a
        token, kept in the database with the update that sent it. None: the token is gone."""
        if not data.startswith(TOKEN_PREFIX):
            return data
        return handoffs.button_data(self._transaction.store, data)

    def _render(self, response: Response, context: dict) -> dict:
        """render_reply, with button data over 64 bytes kept under a token (durably, with
        this update) instead of failing."""
        tokens: dict[str, str] = {}
        reply = render_reply(response, context, tokens, self.chat_id)
        if response.media is not None:
            reply = media_reply(reply, response.media, context, self.pipeline.definitions.directory)
        for token, data in tokens.items():
            self._transaction.stage(handoffs.keep_button_data(token, data, self.chat_id))
        return reply

    # -- one update through the pipeline ---------------------------------------------------

    def _answer(self, text: str, message: dict, source: dict, callback: dict | None) -> None:
        tree = self.pipeline.definitions.tree
        if tree is not None and in_tree(self.state) and callback is None and not text.startswith("/"):
            # inside the tree its answers come first; a /command or an inline button press
            # (the tree uses reply keyboards only) still reaches the handlers
            self._walk_tree(tree, text, self._context(message, source, None, callback))
            return
        try:
            handler, found = self.pipeline.match(text, self.state)
            starts_tree = handler is None and self.pipeline.starts_tree(text, self.state)
        except PatternTimeout as exc:  # the transaction answers with the bot's error text
            raise UpdateFailed(str(exc), answered=False) from None
        context = self._context(message, source, found, callback)
        if starts_tree:
            assert tree is not None   # starts_tree is False for a bot without a tree
            self._say_node(tree, tree.root, "", context)
            return
        if handler is None and tree is not None and (self.state or "").startswith(DONE_PREFIX):
            self._ask_again(tree, context)  # the message after a leaf: never silence
            return
        if handler is None:
            self._reply_fallback(context)
            return
        try:
            if handler.request is not None:
                if handler.request.uses_callback:
                    context["conversation"] = frozen({"callback_url": self._callback_url(handler)})
                context["response"] = frozen(perform(handler.request, context, self.pipeline.session))
            reply = self._render(handler.response, context) if handler.response else None
            saved = {name: template.render(context) for name, template in handler.save.items()}
        except (RequestFailed, TemplateError) as exc:
            self._reply_error(handler, exc, context)
            return
        if reply is not None:
            self._send(reply)
        self._transition(handler, context, saved)
        if handler.handoff:
            self.handoff(note=text or None)

    def _context(self, message: dict, source: dict, found: Match | None,
                 callback: dict | None) -> dict:
        pattern: dict[Any, Any] = {}
        if found is not None:
            # an optional group that did not match is empty text, not None (rendered "None")
            pattern = {i: g for i, g in enumerate(found.groups(default=""), start=1)}
            pattern.update({k: v for k, v in found.groupdict(default="").items()})
            pattern[0] = found.group(0)
        # read-only copies: a template must not change the conversation or anything shared
        # (each part copied once: the message is the source, or inside the callback query)
        read_source = frozen(source)
        if message is source:
            read_message = read_source
        elif message is source.get("message"):
            read_message = read_source["message"]
        else:
            read_message = frozen(message)
        return {
            "message": read_message,
            "chat": read_message.get("chat") or FrozenDict({"id": self.chat_id}),
            "user": read_source.get("from") or read_message.get("from") or FrozenDict(),
            "callback": read_source if callback is source else frozen(callback or {}),
            "pattern": frozen(pattern),
            "state": self.state,
            "state_context": frozen(self._conversation.state_context),
            "vars": frozen(self.vars),
            "env": self.pipeline.env,
            "emoji": READ_ONLY_EMOJI,
            "response": FrozenDict(),
        }

    def _callback_url(self, handler: Handler) -> str:
        """A new callback URL for this chat and handler; its token is on disk before the
        request that hands it out is sent."""
        base = self.pipeline.callback_base
        if base is None:
            where = handler.request.where if handler.request else handler.where
            raise TemplateError(where, "conversation.callback_url needs the hook server, "
                                "which is off here (set hooks.port)")
        # a group member's request: the result meets that member's conversation
        token = callbacks.create(self._transaction.store, self.chat_id, handler.name,
                                 self.pipeline.callback_expiry, member=self._conversation.member)
        return f"{base}{callbacks.PATH}{token}"

    def on_callback(self, result: dict) -> None:
        """A result posted to a callback URL: the on_callback of the handler that made it
        answers, and saves and moves on if it says so, its templates seeing the posted JSON
        as `callback.data`."""
        name = result.get("handler")
        handler = next((h for h in self.pipeline.definitions.handlers if h.name == name), None)
        if handler is None or handler.on_callback is None:
            log.warning("chat %s: a callback result for handler %r, which has no on_callback "
                        "(any more); dropped", self.chat_id, name)
            return
        action = handler.on_callback
        context = self._context({"chat": {"id": self.chat_id}}, {}, None, None)
        context["callback"] = frozen({"data": result.get("data")})
        try:
            reply = self._render(action.response, context)
            saved = {key: template.render(context) for key, template in action.save.items()}
        except TemplateError as exc:
            raise UpdateFailed(f"handler {handler.name} ({handler.where}) on_callback failed: "
                               f"{exc}", answered=False) from None
        # everything rendered before anything changes; the answer, the saved vars and the
        # new state then commit in this update's one transaction (or none of them does)
        self._send(reply)
        self.vars.update(saved)
        if action.target_state is not None:
            self.state = action.target_state
            self._conversation.state_context[action.target_state] = _kept_callback(context)

    def _transition(self, handler: Handler, context: dict, saved: dict) -> None:
        self.vars.update(saved)
        action = handler.schedule
        if action is not None and action.action == "start":
            self.start_schedule(action.name, action.every)
        elif action is not None:
            self.stop_schedule(None if action.name == "all" else action.name)
        if handler.target_state is None:
            return
        self.state = handler.target_state
        self._conversation.state_context[handler.target_state] = _kept_context(context)

    # -- the decision tree ------------------------------------------------------------------

    def _walk_tree(self, tree: Tree, text: str, context: dict) -> None:
        state = self.state or ""
        if state.startswith(RETRY_PREFIX):
            if text.strip().casefold() in YES:
                self._say_node(tree, tree.root, "", context)
            else:
                self._tree_reply(tree.goodbye, context, {"remove_keyboard": True},
                                 tree.parse_mode, tree.target_state)
            return
        place = state.split(":", 1)[1]
        node = tree.node_at(place)
        if node is None:  # the tree was changed by a reload: start it over
            self._say_node(tree, tree.root, "", context)
            return
        path = place.partition(":")[2]
        index = pick(node, text)
        if index is None:
            self._tree_reply(tree.not_understood, context,
                             {"keyboard": [[{"text": "Yes"}], [{"text": "No"}]],
                              "resize_keyboard": True, "one_time_keyboard": True},
                             tree.parse_mode, RETRY_PREFIX + place)
            return
        self._say_node(tree, node.answers[index], f"{path}.{index}" if path else str(index), context)

    def _say_node(self, tree: Tree, node: Node, path: str, context: dict) -> None:
        """Say what a node says; show its answers and wait there, or leave the tree at a leaf."""
        if node.answers:
            markup = {"keyboard": [[{"text": child.label}] for child in node.answers],
                      "resize_keyboard": True, "one_time_keyboard": True}
            self._tree_reply(node.say, context, markup, tree.parse_mode, tree.state_of(path))
        else:
            self._tree_reply(node.say, context, {"remove_keyboard": True}, tree.parse_mode,
                             node.target_state or tree.target_state
                             or DONE_PREFIX + tree.fingerprint)

    def _ask_again(self, tree: Tree, context: dict) -> None:
        """After a leaf: "start again?", answered like a misunderstood answer (yes/no)."""
        self._tree_reply(tree.again, context, {"keyboard": [[{"text": "Yes"}], [{"text": "No"}]],
                                               "resize_keyboard": True, "one_time_keyboard": True},
                         tree.parse_mode, f"{RETRY_PREFIX}{tree.fingerprint}:")

    def _tree_reply(self, template: Template, context: dict, markup: dict, parse_mode: str | None,
                    state: str | None) -> None:
        """Render, send, then move: a template error leaves the conversation where it was."""
        try:
            reply = render_reply(Response(template, parse_mode, where=template.where), context)
        except TemplateError as exc:
            raise UpdateFailed(f"tree ({template.where}) failed: {exc}", answered=False) from None
        reply["reply_markup"] = markup
        self._send(reply)
        self.state = state

    def on_schedule(self, tick: dict) -> None:
        name = tick["name"]   # on_update passes on only the ticks of a running schedule, by name
        schedule = self.pipeline.definitions.schedules.get(name)
        if schedule is None:
            log.info("chat %s: schedule %r is no longer defined; stopping it", self.chat_id, name)
            self.stop_schedule(name)
            return
        context = self._context({"chat": {"id": self.chat_id}}, {}, None, None)
        context["tick"] = frozen(tick)
        try:
            if schedule.request is not None:
                context["response"] = frozen(perform(schedule.request, context, self.pipeline.session))
            reply = self._render(schedule.response, context)
        except (RequestFailed, TemplateError) as exc:
            if isinstance(exc, RequestFailed):
                context["response"] = frozen(exc.response)
            if schedule.on_error is not None:
                self._send(self._render(schedule.on_error, context))
            raise UpdateFailed(f"schedule {schedule.name} ({schedule.where}) failed: {exc}",
                               answered=schedule.on_error is not None) from None
        self._send(reply)

    def _reply_fallback(self, context: dict) -> None:
        fallback = self.pipeline.definitions.fallback
        if fallback is None:
            log.info("chat %s: no handler matched and the bot has no fallback", self.chat_id)
            return
        try:
            reply = self._render(fallback, context)
        except TemplateError as exc:
            raise UpdateFailed(f"fallback: {exc}", answered=False) from None
        self._send(reply)

    def _reply_error(self, handler: Handler, exc: Exception, context: dict) -> None:
        """Answer with the handler's on_error if it has one, then fail the update (rolled back)."""
        cause = f"handler {handler.name} ({handler.where}) failed: {exc}"
        if isinstance(exc, RequestFailed):
            context["response"] = frozen(exc.response)
        if handler.on_error is not None:
            try:
                reply = self._render(handler.on_error, context)
            except TemplateError as second:
                cause += f"; on_error failed too: {second}"
            else:
                self._send(reply)
                raise UpdateFailed(cause, answered=True)
        raise UpdateFailed(cause, answered=False)


def own_command(text: str, username: str | None) -> str | None:
    """The text with a leading `/command@username` read as `/command`, so `^/start$` matches
    what a group sends; None when the command names another bot (not this one's to answer)."""
    found = _ADDRESSED.match(text)
    if found is None or (found.end() < len(text) and not text[found.end()].isspace()):
        return text
    if username is not None and found.group(2).casefold() != username.casefold():
        return None
    return found.group(1) + text[found.end():]


def render_reply(response: Response, context: dict, tokens: dict[str, str] | None = None,
                 chat_id: int = 0) -> dict:
    """sendMessage parameters for a response: text, parse mode and keyboard.

    Button data over Telegram's 64 bytes goes into `tokens` (token → data) and out as the
    token, when a dict is given; without one it is a TemplateError."""
    text = response.text.render(context)
    if not text.strip() and response.media is None:  # a photo or document may go without caption
        raise TemplateError(response.where, "the rendered text is empty")
    reply: dict[str, Any] = {"text": text}
    if response.parse_mode:
        reply["parse_mode"] = response.parse_mode
    if response.disable_web_page_preview:
        reply["link_preview_options"] = {"is_disabled": True}
    markup = _markup(response, context, tokens, chat_id)
    if markup:
        reply["reply_markup"] = markup
    return reply


def media_reply(reply: dict, media: Media, context: dict, directory: str | None) -> dict:
    """sendPhoto/sendDocument parameters from a rendered reply: its text is the caption (left
    out when empty), the file is a URL, a file_id or an upload from the bot's directory
    (MediaError, a TemplateError, when the path leads out or the file cannot be sent)."""
    params = {key: value for key, value in reply.items()
              if key not in ("text", "link_preview_options")}
    if reply["text"].strip():
        params["caption"] = reply["text"]
    else:
        params.pop("parse_mode", None)
    params[media.kind] = media_value(directory, media.kind, media.source.render(context),
                                     media.where)
    return params


def _markup(response: Response, context: dict, tokens: dict[str, str] | None = None,
            chat_id: int = 0) -> dict | None:
    if response.button_rows is not None:
        rows = rendered_rows(response.button_rows, context)
        return {"inline_keyboard": [[_button_item(button, response, tokens, chat_id)
                                     for button in row] for row in rows]} if rows else None
    if response.keyboard_rows is not None:
        rows = rendered_rows(response.keyboard_rows, context)
        if not rows:
            return None
        return {"keyboard": [[{"text": _label(label, response)} for label in row] for row in rows],
                "resize_keyboard": True, "one_time_keyboard": response.one_time_keyboard}
    if response.buttons:
        rows = []
        for row in response.buttons:
            rendered = []
            for button in row:
                item = {"text": button.text.render(context)}
                if button.url is not None:
                    item["url"] = button.url.render(context)
                else:
                    assert button.data is not None   # a button without a url has data (its text by default)
                    item["callback_data"] = button.data.render(context)
                    if len(item["callback_data"].encode()) > MAX_DATA:
                        item["callback_data"] = _token_for(item["callback_data"], response,
                                                           tokens, chat_id)
                rendered.append(item)
            rows.append(rendered)
        return {"inline_keyboard": rows}
    if response.keyboard:
        rows = [[{"text": label.render(context)} for label in row] for row in response.keyboard]
        return {"keyboard": rows, "resize_keyboard": True,
                "one_time_keyboard": response.one_time_keyboard}
    if response.remove_keyboard:
        return {"remove_keyboard": True}
    return None


def rendered_rows(template: Template, context: dict) -> list[list[Any]]:
    """The rows a keyboard template renders to: a JSON list (`| tojson`) or a Python-looking
    one; an item that is not a list is a row of its own. [] for no keyboard."""
    text = template.render(context).strip()
    if not text:
        return []
    try:
        value = literal_of(text)
    except ValueError:
        raise TemplateError(template.where, "the keyboard must render to a list of rows, "
                            f"not {text[:60]!r}") from None
    if not isinstance(value, (list, tuple)):
        raise TemplateError(template.where, f"the keyboard must render to a list of rows, not "
                            f"{type(value).__name__}")
    rows = [list(row) if isinstance(row, (list, tuple)) else [row] for row in value]
    rows = [row for row in rows if row]
    if sum(len(row) for row in rows) > MAX_BUTTONS:
        raise TemplateError(template.where, f"the keyboard has more than {MAX_BUTTONS} buttons")
    return rows


def _label(label: Any, response: Response) -> str:
    if isinstance(label, (dict, list, tuple)) or label is None or not str(label).strip():
        raise TemplateError(response.where, f"a keyboard label must be text, not {label!r}")
    return str(label)


def _button_item(button: Any, response: Response, tokens: dict[str, str] | None,
                 chat_id: int) -> dict:
    """An inline button from a rendered row: "label", or {text, data} or {text, url}."""
    if not isinstance(button, dict):
        button = {"text": button, "data": button}
    text, data, url = button.get("text"), button.get("data"), button.get("url")
    item = {"text": _label(text, response)}
    if url is not None:
        if not isinstance(url, str) or not url.startswith(("https://", "http://", "tg://")):
            raise TemplateError(response.where, f"a button url must be http(s):// or tg://, "
                                f"not {url!r}")
        item["url"] = url
        return item
    data = str(text if data is None else data)
    item["callback_data"] = data if len(data.encode()) <= MAX_DATA else \
        _token_for(data, response, tokens, chat_id)
    return item


def choices_of(markup: Any) -> list[list[str]] | None:
    """[kind, value, label] for each option of a keyboard ("text"), or of inline buttons
    ("data" or "url"); [] when the markup removes the keyboard; None when it has none."""
    if not isinstance(markup, dict):
        return None
    if markup.get("remove_keyboard"):
        return []
    inline = "inline_keyboard" in markup
    rows = markup.get("inline_keyboard") if inline else markup.get("keyboard")
    if not rows:
        return None
    choices = []
    for button in (button for row in rows for button in row):
        label = button.get("text", "")
        if not inline:
            choices.append(["text", label, label])
        elif "url" in button:
            choices.append(["url", button["url"], label])
        else:
            choices.append(["data", button.get("callback_data", label), label])
    return choices


def as_numbered_list(reply: dict) -> dict:
    """A reply whose options do not fit on buttons (too many, or too long), with them as a
    numbered list in its text instead; a typed number picks one all the same."""
    choices = choices_of(reply.get("reply_markup"))
    if not choices or (len(choices) <= MAX_OPTIONS
                       and all(len(label) <= MAX_LABEL for _, _, label in choices)):
        return reply
    escape = _ESCAPES.get(reply.get("parse_mode") or "", str)
    # every added character is escaped too: MarkdownV2 refuses a bare "." as in "1."
    lines = [escape(f"{number}. {label}") + (escape(f" – {value}") if kind == "url" else "")
             for number, (kind, value, label) in enumerate(choices, start=1)]
    listed = dict(reply, text=reply["text"] + "\n\n" + "\n".join(lines) + "\n\n"
                  + escape("Answer with a number."))
    if "keyboard" in reply["reply_markup"]:
        listed["reply_markup"] = {"remove_keyboard": True}
    else:
        listed.pop("reply_markup")
    return listed


def escape_html(text: str) -> str:
    """html.escape's five characters, without importing html (its entity table is 0.6 MB)."""
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#x27;"))


_ESCAPES: dict[str, Callable[[str], str]] = {"HTML": escape_html, "MarkdownV2": escape_markdown_v2}


def _token_for(data: str, response: Response, tokens: dict[str, str] | None, chat_id: int) -> str:
    if tokens is None:
        raise TemplateError(response.where, "button data is longer than 64 bytes")
    digest = hashlib.sha256(f"{chat_id}\0{data}".encode()).digest()
    token = TOKEN_PREFIX + base64.urlsafe_b64encode(digest).decode()[:32]
    tokens[token] = data
    return token


def _kept_context(context: dict) -> dict:
    """What state_context remembers of the transition into a state."""
    kept = {
        "pattern": {str(k): v for k, v in context["pattern"].items()},
        "message": {"text": context["message"].get("text"),
                    "message_id": context["message"].get("message_id")},
    }
    response = context.get("response") or {}
    if response:
        data = response.get("data")
        if len(repr(data)) <= MAX_CONTEXT_TEXT:
            kept["response"] = {"status": response.get("status"), "data": _thawed(data)}
    return kept


def _kept_callback(context: dict) -> dict:
    """What state_context remembers of a late result that moved the conversation on."""
    data = context["callback"].get("data")
    return {"callback": {"data": _thawed(data)}} if len(repr(data)) <= MAX_CONTEXT_TEXT else {}


def _thawed(value: Any) -> Any:
    """Plain JSON data again (dicts and lists) for the conversation to keep."""
    return json.loads(json.dumps(value))
