"""The Streamlit UI, installed as the package ``timemachine.ui`` (see ``package-dir`` in pyproject.toml).

``app.py`` is the entry point that ``timemachine ui`` hands to ``streamlit run`` (found with
``importlib.resources``, so it works from a wheel as from a source checkout).  The other modules are
imported by the app under their plain names: Streamlit puts this folder on ``sys.path``.  Importing this
package does not import Streamlit.
"""
