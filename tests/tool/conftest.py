"""
Tests of the tool, laid out like helper/: captioning/, data/, kit/, instructor/ and dev/.

Their shared fixtures and stand-ins (_cli_data.py, _kit.py, _range_server.py, ...) live here, beside this
file; pytest puts this folder on sys.path when it loads this conftest, so every test imports them by name.
"""
