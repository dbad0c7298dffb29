"""The analysts' page: a Panel app over the same loader and analytics core as the API.

It runs as its own process (``ezdash analyst``, started by ``ezdash serve``), so
rendering charts for a few analysts never competes with the API's event loop, and
its fits go to its own bounded worker pool.
"""
