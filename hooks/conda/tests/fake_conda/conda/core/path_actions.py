"""`conda.core.path_actions.Action`, as post-transaction plugins subclass it."""

from abc import ABC, abstractmethod


class Action(ABC):
    _verified = False

    def __init__(
        self,
        transaction_context=None,
        target_prefix=None,
        unlink_precs=None,
        link_precs=None,
        remove_specs=None,
        update_specs=None,
        neutered_specs=None,
    ):
        self.transaction_context = transaction_context
        self.target_prefix = target_prefix
        self.unlink_precs = unlink_precs
        self.link_precs = link_precs
        self.remove_specs = remove_specs
        self.update_specs = update_specs
        self.neutered_specs = neutered_specs

    @abstractmethod
    def verify(self):
        """Returns (not raises) an exception on failure; sets self._verified."""

    @abstractmethod
    def execute(self):
        """If this raises, conda calls reverse()."""

    @abstractmethod
    def reverse(self):
        pass

    @abstractmethod
    def cleanup(self):
        pass

    @property
    def verified(self):
        return self._verified
