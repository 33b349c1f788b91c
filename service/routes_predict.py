"""(being written)"""

from flask import Blueprint

bp = Blueprint("predict", __name__)
