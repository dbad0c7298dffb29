"""Data access over Redis shared by the API server and the agent runtime.

Nothing here knows about HTTP.  Writes that touch more than one key go
through the Lua scripts in ``ezdash/lua`` so every state change is atomic and
emits its event in the same step.
"""
