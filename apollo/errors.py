"""The exceptions Apollo raises for bad input; the command line prints them as one line."""

__all__ = ["ApolloError", "MidiError", "UsageError"]


class ApolloError(Exception):
    """A problem the user can fix (bad file, bad option, missing dependency), with a readable message."""


class MidiError(ApolloError):
    """A MIDI file that cannot be read or is not usable (broken, empty, absurd)."""


class UsageError(ApolloError):
    """A request that does not fit its input, such as bars outside the piece; the command line exits with status 2."""
