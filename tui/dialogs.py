"""Modal dialogs: confirmations (``y`` confirms, ``n`` or Escape cancels, focus starts on the safe
choice) and the input of a follow-up message."""

from __future__ import annotations

from rich.console import RenderableType
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static


class ConfirmScreen(ModalScreen[bool | None]):
    """Ask one yes/no question; dismisses with True (yes) or False (no, Escape). With ``cancel``,
    Escape is a third answer, None: neither (the question is put away)."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 72; max-width: 90%; height: auto; border: thick $warning;
                               background: $surface; padding: 1 2; }
    ConfirmScreen .confirm-title { text-style: bold; margin-bottom: 1; }
    ConfirmScreen .confirm-body { margin-bottom: 1; }
    ConfirmScreen Horizontal { height: auto; align-horizontal: right; }
    ConfirmScreen Button { margin-left: 2; }
    """

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", tooltip="Confirm", id="confirm.yes"),
        Binding("n", "answer(False)", "No", tooltip="Cancel", id="confirm.no"),
        Binding("escape", "escape", "Cancel", show=False),
    ]

    def __init__(self, title: str, body: RenderableType, yes: str = "Yes", no: str = "No",
                 danger: bool = True, cancel: bool = False) -> None:
        super().__init__()
        self.cancel = cancel
        self.title_text = title
        self.body = body
        self.yes_label = yes
        self.no_label = no
        self.danger = danger

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, classes="confirm-title")
            yield Static(self.body, classes="confirm-body")
            with Horizontal():
                yield Button(Text(f"{self.no_label} [n]"), id="no", variant="primary")
                yield Button(Text(f"{self.yes_label} [y]"), id="yes", variant="error" if self.danger else "success")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def update_body(self, body: RenderableType) -> None:
        """Say something new under the same question (the run went on while it was open)."""
        if isinstance(body, Text) and isinstance(self.body, Text) and body.plain == self.body.plain:
            return
        self.body = body
        if self.is_mounted:
            self.query_one(".confirm-body", Static).update(body)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    def action_escape(self) -> None:
        self.dismiss(None if self.cancel else False)


class FollowUpScreen(ModalScreen[str | None]):
    """A follow-up message for a task's agent (or a retry's prompt, ``value`` to edit): ``enter``
    sends what was typed, ``escape`` cancels (None). ``note`` says what happens to it (queued, the
    session resumed, the review withdrawn, a new attempt)."""

    DEFAULT_CSS = """
    FollowUpScreen { align: center middle; }
    FollowUpScreen > Vertical { width: 80; max-width: 90%; height: auto; border: thick $accent;
                                background: $surface; padding: 1 2; }
    FollowUpScreen .confirm-title { text-style: bold; margin-bottom: 1; }
    FollowUpScreen .confirm-body { margin-top: 1; color: $text-muted; }
    """

    BINDINGS = [Binding("escape", "cancel", "Cancel", show=False)]

    def __init__(self, task: str, title: str, note: str, value: str = "") -> None:
        super().__init__()
        self.task_name = task
        self.title_text = title
        self.note = note
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.title_text, classes="confirm-title")
            yield Input(self.value, placeholder="also add a test for it", id="message")
            yield Static(f"enter sends, escape cancels. {self.note}", classes="confirm-body")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        if event.value.strip():
            self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)
