"""corral's front ends: the command line, the headless renderers and the Textual dashboard."""
