"""EzAugent Dashboard: the control plane for fleets of LLM agents.

The server (``ezdash.api``), the agent runtime real agents import
(``ezdash.agent``) and the Redis data model they share (``ezdash.keys``,
``ezdash.store``) live here; ``analytics`` is a sibling package.
"""

__version__ = "0.1.0"
