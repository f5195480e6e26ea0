"""Output parsers: turn an agent's stdout lines into readable pane lines, activity, final text and usage.

A parser is fed one decoded line at a time (without its newline) and returns the readable lines to
show for it (zero or more). It never raises on odd input: unknown or malformed lines are shown as
text. After the agent exits, :attr:`Parser.final_text` and :attr:`Parser.usage` hold what the
report shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Usage:
    """What an agent spent: cost in USD where the agent reports it, tokens otherwise."""

    cost: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass
class Parser:
    """Base parser: plain text. Every line is shown as it is; the last non-empty lines are the final text."""

    usage: Usage = field(default_factory=Usage)
    activity: str = ""
    final_text: str = ""
    _tail: list[str] = field(default_factory=list)

    TAIL_LINES = 20

    def feed(self, line: str) -> list[str]:
        """Take one line of output; return the lines to show for it."""
        self._remember(line)
        return [line]

    def feed_lines(self, lines: list[str]) -> list[str]:
        """Take a batch of lines; return the lines to show for them."""
        out: list[str] = []
        for line in lines:
            out += self.feed(line)
        return out

    def _remember(self, line: str) -> None:
        if line.strip():
            self._tail.append(line)
            if len(self._tail) > self.TAIL_LINES:
                del self._tail[0]

    def finish(self) -> None:
        """Called once after the agent exited."""
        if not self.final_text:
            self.final_text = "\n".join(self._tail[-5:])


class TextParser(Parser):
    """Plain text output (the ``shell`` profile and any command without structured output)."""

    def feed_lines(self, lines: list[str]) -> list[str]:
        tail = [line for line in lines[-self.TAIL_LINES :] if line.strip()]
        if tail:
            self._tail = (self._tail + tail)[-self.TAIL_LINES :]
        return lines


PARSERS: dict[str, type[Parser]] = {"text": TextParser}


def make_parser(fmt: str) -> Parser:
    """A fresh parser for an output format name; unknown formats fall back to text."""
    return PARSERS.get(fmt, TextParser)()


def known_formats() -> list[str]:
    return sorted(PARSERS)
