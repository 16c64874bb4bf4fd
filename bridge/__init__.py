"""The SIP bridge: ``service`` runs in the main process, ``worker`` in each bridge worker process;
``control`` is the channel between them."""
