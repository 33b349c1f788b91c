"""(being written)"""

from flask import Blueprint

bp = Blueprint("tfserving", __name__)
