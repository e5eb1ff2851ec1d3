from .base import DeadLetter, Delivery, LeasingStorageMixin
from .mongo import MongoStorage
from .sqlite import LeasingSqliteStorage

__all__ = ["DeadLetter", "Delivery", "LeasingSqliteStorage", "LeasingStorageMixin", "MongoStorage"]
