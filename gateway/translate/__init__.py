"""Pure, I/O-free translation between the customer surfaces and the Cortensor router protocol.

Modules: ``sse`` (event-stream parsing and framing), ``common`` (shared types, token
estimates, stop strings), ``prompt`` (chat rendering), ``router`` (upstream body, answer
and stream reader), and one module per surface: ``openai_chat``, ``anthropic_messages``,
``envelope``, ``responses``. Import from those modules directly; this package re-exports nothing.
"""
