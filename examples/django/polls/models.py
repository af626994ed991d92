from django.db import models


class Poll(models.Model):
    question = models.CharField(max_length=200)
    votes = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return self.question
