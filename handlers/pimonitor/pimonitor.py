"""Reports the Pi's temperature, load and uptime, now or on a schedule; /chart draws the last hour.

/chart samples the temperature and load once a minute from its first use on (a schedule,
kept across restarts; /cancel stops it) and keeps the last hour of samples in the chat's
vars: at most MAX_SAMPLES, whatever the clock does. matplotlib draws them; it is an
optional extra (`pip install 'chatdaemon[chart]'`) imported by the first /chart only, so a
Pi that never asks for a chart never pays for it.
"""

import io
import os
import time

from chatdaemon import ChatHandler

THERMAL_ZONE = os.environ.get("PIMONITOR_THERMAL", "/sys/class/thermal/thermal_zone0/temp")
EVERY = {"/1m": 60, "/1h": 3600}
HELP = ("/now for a report, /1m or /1h for one every minute or hour, /chart for the last "
        "hour, /cancel to stop.")
SAMPLE_EVERY = 60           # seconds between two samples for /chart
HOUR = 3600
MAX_SAMPLES = HOUR // SAMPLE_EVERY + 1
INSTALL_CHART = ("/chart needs matplotlib, which is not installed here. Install it with:\n"
                 "pip install 'chatdaemon[chart]'")


def celsius() -> float | None:
    try:
        with open(THERMAL_ZONE) as handle:
            return int(handle.read().strip()) / 1000
    except (OSError, ValueError):
        return None


def temperature() -> str:
    value = celsius()
    return "not available on this machine" if value is None else f"{value:.1f} °C"


def uptime() -> str:
    try:
        with open("/proc/uptime") as handle:
            seconds = int(float(handle.read().split()[0]))
    except (OSError, ValueError, IndexError):
        return "unknown"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h {rest // 60}m"


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def report() -> str:
    return (f"CPU temperature: {temperature()}\n"
            f"Load: {load()}\n"
            f"Uptime: {uptime()}")


def with_sample(samples: list, now: float) -> list:
    """The samples of the last hour, the one taken now added: [time, °C or None, load or None]."""
    kept = [sample for sample in samples if isinstance(sample, list) and len(sample) == 3
            and isinstance(sample[0], int | float) and now - HOUR <= sample[0] <= now]
    kept.append([now, celsius(), load_average()])
    return kept[-MAX_SAMPLES:]   # the bound holds even if the clock went back


def chart_tools() -> tuple | None:
    """matplotlib's Figure and Agg canvas, or None when matplotlib is not installed (a
    matplotlib that is installed but broken raises, and the chat gets the error text)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ModuleNotFoundError as exc:
        if exc.name != "matplotlib":
            raise
        return None
    return Figure, FigureCanvasAgg


def draw_chart(samples: list, now: float, tools: tuple) -> bytes:
    """A PNG of the samples: temperature above, load below, minutes ago along the bottom.

    It draws on a Figure of its own with the Agg canvas (no pyplot: no global state shared
    by the chats' threads).
    """
    Figure, FigureCanvasAgg = tools  # noqa: N806 - matplotlib's class names
    minutes = [(sample[0] - now) / 60 for sample in samples]
    figure = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    heat, work = figure.subplots(2, 1, sharex=True)
    _plot(heat, minutes, [sample[1] for sample in samples], "CPU °C", "tab:red")
    _plot(work, minutes, [sample[2] for sample in samples], "load (1 min)", "tab:blue")
    work.set_xlim(-60.5, 0.5)
    work.set_xlabel("minutes ago")
    heat.set_title("The last hour")
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def _plot(axes, minutes: list, values: list, label: str, color: str) -> None:
    points = [(m, v) for m, v in zip(minutes, values, strict=True) if v is not None]
    axes.set_ylabel(label)
    axes.grid(True, alpha=0.3)
    if not points:
        axes.text(0.5, 0.5, "not available on this machine", ha="center", va="center",
                  transform=axes.transAxes)
        axes.set_yticks([])
        return
    xs, ys = zip(*points, strict=True)
    axes.plot(xs, ys, color=color, marker="." if len(points) < 10 else None)


class PiMonitor(ChatHandler):
    def on_chat_message(self, msg):
        text = (msg.get("text") or "").strip()
        if text == "/now":
            self.sender.sendMessage(report())
        elif text in EVERY:
            self.start_schedule("report", EVERY[text])
            self.sender.sendMessage(f"I'll report every {'minute' if text == '/1m' else 'hour'}. "
                                    "/cancel stops it.")
        elif text == "/chart":
            self.send_chart()
        elif text == "/cancel":
            had = bool(self.schedules)
            self.stop_schedule()
            self.sender.sendMessage("Stopped." if had else "Nothing was scheduled.")
        else:
            self.sender.sendMessage(HELP)

    def on_schedule(self, tick):
        if tick["name"] == "sample":
            self.keep_sample()
        else:
            self.sender.sendMessage(report())

    def keep_sample(self) -> list:
        samples = with_sample(self.vars.get("samples") or [], time.time())
        self.vars["samples"] = samples
        return samples

    def send_chart(self) -> None:
        tools = chart_tools()
        if tools is None:   # no sampling either: it would fill vars for a chart never drawn
            self.sender.sendMessage(INSTALL_CHART)
            return
        samples = self.keep_sample()
        started = "sample" not in self.schedules
        if started:
            self.start_schedule("sample", SAMPLE_EVERY)
        png = draw_chart(samples, time.time(), tools)
        caption = f"{len(samples)} sample(s) of the last hour, one a minute."
        if started:
            caption += " Sampling from now on; /cancel stops it."
        self.sender.sendPhoto(("chart.png", io.BytesIO(png)), caption=caption)
