"""`conda.base.context.context`: only what the plugin reads."""


class Context:
    target_prefix = None


context = Context()
