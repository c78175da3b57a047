"""The web view of a running engine (streamer.web.server): live scores, events, prompts, search."""
