"""xsearch: neural architecture search for PyTorch, driven by DA-NAS (progressive data-adapted pruning).

Public API lives in the component packages: ``xsearch.datasets``, ``xsearch.search_spaces``,
``xsearch.supernets``, ``xsearch.strategies``, ``xsearch.evaluators``, and the ``xsearch`` command line.
"""

__version__ = "0.1.0"
