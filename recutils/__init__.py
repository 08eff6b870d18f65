"""recutils: the thin helper package of the LLM-for-sequential-recommendation course.

Import the submodules you need (``recutils.data``, ``recutils.evaluation``,
``recutils.models``, ``recutils.training``, ``recutils.lm``, ``recutils.notebook``,
``recutils.plots``). Importing has no side effects: no seeding, no downloads.
"""

__version__ = "0.1.0"
