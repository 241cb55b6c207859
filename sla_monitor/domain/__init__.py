"""The pure core: events, calendars, policies and the engine. No I/O, no clock reads."""
