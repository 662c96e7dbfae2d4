"""Apollo's command line (installed as ``apollo.cli``): a thin click layer over the library."""
