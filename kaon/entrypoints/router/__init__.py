"""Data-parallel serving: N engine replicas (``kaon serve`` processes) behind one OpenAI
endpoint. ``policy`` chooses the replica (prefix affinity, outstanding tokens), ``replica``
supervises the processes, ``proxy`` is the front's FastAPI app, ``server`` runs it."""
