"""Apollo: a symbolic music composition toolkit.

MIDI corpora become fixed piano-roll datasets (:mod:`apollo.preprocess`), a DCGAN learns them
(:mod:`apollo.model`, :mod:`apollo.train`), and new rolls become MIDI and audio
(:mod:`apollo.generate`, :mod:`apollo.render`). Importing this package is cheap: torch is only
imported by the modules that need it.
"""

__version__ = "0.1.0"

from apollo.errors import ApolloError, MidiError
from apollo.roll import ENCODINGS, Grid, PianoRoll

__all__ = ["ApolloError", "MidiError", "ENCODINGS", "Grid", "PianoRoll", "__version__"]
