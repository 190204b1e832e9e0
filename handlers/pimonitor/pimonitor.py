"""Reports the Pi's temperature, load and uptime, now or on a schedule."""

import os

from chatdaemon import ChatHandler

THERMAL_ZONE = os.environ.get("PIMONITOR_THERMAL", "/sys/class/thermal/thermal_zone0/temp")
EVERY = {"/1m": 60, "/1h": 3600}
HELP = "/now for a report, /1m or /1h for one every minute or hour, /cancel to stop."


def temperature() -> str:
    try:
        with open(THERMAL_ZONE) as handle:
            return f"{int(handle.read().strip()) / 1000:.1f} °C"
    except (OSError, ValueError):
        return "not available on this machine"


def uptime() -> str:
    try:
        with open("/proc/uptime") as handle:
            seconds = int(float(handle.read().split()[0]))
    except (OSError, ValueError, IndexError):
        return "unknown"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    return f"{days}d {hours}h {rest // 60}m"


def load() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def report() -> str:
    return (f"CPU temperature: {temperature()}\n"
            f"Load: {load()}\n"
            f"Uptime: {uptime()}")


class PiMonitor(ChatHandler):
    def on_chat_message(self, msg):
        text = (msg.get("text") or "").strip()
        if text == "/now":
            self.sender.sendMessage(report())
        elif text in EVERY:
            self.start_schedule("report", EVERY[text])
            self.sender.sendMessage(f"I'll report every {'minute' if text == '/1m' else 'hour'}. "
                                    "/cancel stops it.")
        elif text == "/cancel":
            had = bool(self.schedules)
            self.stop_schedule()
            self.sender.sendMessage("Stopped." if had else "Nothing was scheduled.")
        else:
            self.sender.sendMessage(HELP)

    def on_schedule(self, tick):
        self.sender.sendMessage(report())
